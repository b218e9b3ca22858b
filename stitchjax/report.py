"""Tables in the layouts of the paper's Tables 1, 2 and 4, and accuracy-per-layer plots (Figures 3-5).

All of it is derived from `results.json` records, so a report can be rebuilt from a
finished workdir: `python -c "import stitchjax.report as r; r.write('workdir')"`.
"""
import json
import pathlib

from stitchjax import atomic
from stitchjax import records as rec


def table1(records, stitch_layer: str) -> str:
  """TLT from a random stitch (init None) against TLT from the FFM stitch, per layer."""
  layers = rec.layers(records)
  rows = []
  for s, t in rec.routes(records):
    for init, method in (('None', 'tlt'), ('FFM', 'ffm_tlt')):
      acc = rec.scores(records, method=method, stitch_layer=stitch_layer)
      if any((s, t, l) in acc for l in layers):
        rows.append([f'{s}{rec.PAIR_ARROW}{t}', init] + [rec.pct(acc.get((s, t, l))) for l in layers])
  return rec.table(['pair', 'init'] + [f'L{l}' for l in layers], rows,
                   f'Table 1: task-loss training with and without FFM initialisation ({stitch_layer}), '
                   f'test {rec.metric_name(records)} %')


def table2(records, stitch_layer: str, method: str = 'ffm_tlt') -> str:
  """Stitched against self-stitched models per layer, with each backbone's linear probe."""
  layers = rec.layers(records)
  acc = rec.scores(records, method=method, stitch_layer=stitch_layer)
  lp = rec.scores(records, method='lp')
  rows = [[f'{s}{rec.PAIR_ARROW}{t}' + (' (self)' if s == t else '')] + [rec.pct(acc.get((s, t, l))) for l in layers]
          for s, t in rec.routes(records) if any((s, t, l) in acc for l in layers)]
  rows += [[f'{s} linear probe'] + [rec.pct(v)] * len(layers) for (s, _, _), v in lp.items()]
  return rec.table(['model'] + [f'L{l}' for l in layers], rows,
                   f'Table 2: stitched vs self-stitched ({method}, {stitch_layer}), '
                   f'test {rec.metric_name(records)} %')


def table4(records, stitch_layer: str) -> str:
  """Layer against final feature matching: linear-probe accuracy of the stitched model per layer."""
  layers = rec.layers(records)
  rows = []
  for method, name in (('lfm', 'Layer Feature Matching'), ('ffm', 'Final Feature Matching')):
    acc = rec.scores(records, method=method, stitch_layer=stitch_layer)
    rows += [[name, f'{s}{rec.PAIR_ARROW}{t}'] + [rec.pct(acc.get((s, t, l))) for l in layers]
             for s, t in rec.routes(records) if any((s, t, l) in acc for l in layers)]
  return rec.table(['method', 'pair'] + [f'L{l}' for l in layers], rows,
                   f'Table 4: LFM vs FFM, linear probe of the stitched model ({stitch_layer}), '
                   f'test {rec.metric_name(records)} %')


def distances_table(records, stitch_layer: str) -> str:
  """The paper's Figure 2 as numbers: mean feature distance at the stitch point and at the final layer."""
  layers = rec.layers(records)
  rows = []
  for method in ('lfm', 'ffm'):
    for metric in ('layer_distance', 'final_distance'):
      vals = {(r['source'], r['target'], r['layer']): r['value'] for r in records
              if r['method'] == method and r['metric'] == metric and r['stitch_layer'] == stitch_layer}
      rows += [[method.upper(), metric.replace('_', ' '), f'{s}{rec.PAIR_ARROW}{t}']
               + [f'{vals[(s, t, l)]:.3g}' if (s, t, l) in vals else '–' for l in layers]
               for s, t in rec.routes(records) if any((s, t, l) in vals for l in layers)]
  return rec.table(['method', 'distance', 'pair'] + [f'L{l}' for l in layers], rows,
                   f'Figure 2: feature distances on the test split ({stitch_layer})')


def plot(records, path: pathlib.Path, stitch_layer: str) -> None:
  """Accuracy against stitch layer: one panel per pair, a line per method, probes as horizontal lines."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  routes = [r for r in rec.routes(records) if r[0] != r[1]] or rec.routes(records)
  if not routes:
    return
  fig, axes = plt.subplots(1, len(routes), figsize=(4.5 * len(routes), 3.6), squeeze=False)
  lp = rec.scores(records, method='lp')
  for ax, (s, t) in zip(axes[0], routes):
    for method in ('lfm', 'ffm', 'tlt', 'ffm_tlt'):
      for route, style in (((s, t), '-o'), ((t, t), ':x')):
        acc = rec.scores(records, method=method, stitch_layer=stitch_layer)
        pts = sorted((l, 100 * v) for (a, b, l), v in acc.items() if (a, b) == route)
        if pts:
          label = method if route == (s, t) else f'{method} self ({t}{rec.PAIR_ARROW}{t})'
          ax.plot(*zip(*pts), style, label=label)
    for (b, _, _), v in lp.items():
      if b in (s, t):
        ax.axhline(100 * v, ls='--', lw=1, color='gray' if b == s else 'black', label=f'{b} linear probe')
    ax.set(title=f'{s}{rec.PAIR_ARROW}{t} ({stitch_layer})', xlabel='stitch layer',
           ylabel=f'test {rec.metric_name(records)} (%)')
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(workdir, context: str | None = None) -> str:
  """Writes tables.md, accuracy_<stitch layer>.png and report.md (opening with `context`, a paragraph on
  the setup, when given) from workdir/results.json; returns the one-screen summary."""
  workdir = pathlib.Path(workdir)
  records = json.loads((workdir / 'results.json').read_text())
  kinds = list(dict.fromkeys(r['stitch_layer'] for r in records if r['stitch_layer']))
  parts = []
  for kind in kinds:
    parts += [table1(records, kind), table2(records, kind), table4(records, kind), distances_table(records, kind)]
    plot(records, workdir / f'accuracy_{kind}.png', kind)
  if not kinds:
    parts.append(table2(records, 'none'))
  atomic.write_text(workdir / 'tables.md', '\n'.join(parts))
  if kinds:
    atomic.write_text(workdir / 'report.md', findings(records, kinds[0], context))
  return '\n'.join(summary_table(records, kind) for kind in kinds) or parts[0]


def summary_table(records, stitch_layer: str) -> str:
  """One screen: test accuracy for every route and method per layer, and the linear probes."""
  layers = rec.layers(records)
  rows = []
  for s, t in rec.routes(records):
    for method in ('ffm_tlt', 'tlt', 'ffm', 'lfm'):
      acc = rec.scores(records, method=method, stitch_layer=stitch_layer)
      if any((s, t, l) in acc for l in layers):
        rows.append([f'{s}{rec.PAIR_ARROW}{t}' + (' (self)' if s == t else ''), method]
                    + [rec.pct(acc.get((s, t, l))) for l in layers])
  rows += [[f'{s} alone', 'lp'] + [rec.pct(v)] * len(layers) for (s, _, _), v in rec.scores(records, method='lp').items()]
  return rec.table(['model', 'method'] + [f'L{l}' for l in layers], rows,
                   f'Test {rec.metric_name(records)} % ({stitch_layer})')


def _se(p: float, n: int) -> float:
  return (p * (1 - p) / max(n, 1)) ** 0.5


def findings(records, stitch_layer: str, context: str | None = None) -> str:
  """report.md: what the run's numbers show, each claim counted over the layers measured, with standard
  errors where the metric has them (accuracy: binomial over the n test examples; mIoU pools pixels over
  the split and has none here), and what they do not show."""
  layers = rec.layers(records)
  metric = rec.task_metric(records)
  n = max((r.get('n', 0) for r in records if r['metric'] == metric and r['split'] == 'test'), default=0)
  se = (lambda p: _se(p, n)) if metric == 'accuracy' else (lambda p: 0.0)
  acc = {m: rec.scores(records, method=m, stitch_layer=stitch_layer) for m in ('lfm', 'ffm', 'tlt', 'ffm_tlt')}
  lp = {s: v for (s, _, _), v in rec.scores(records, method='lp').items()}
  dist = {(r['method'], r['metric'], r['source'], r['target'], r['layer']): r['value'] for r in records
          if r['metric'] in ('layer_distance', 'final_distance') and r['stitch_layer'] == stitch_layer}
  cross = [p for p in rec.routes(records) if p[0] != p[1]]
  margin = 'by more than two standard errors' if metric == 'accuracy' else '(mIoU: no standard error)'
  lines = ['# What the run shows', '']
  if context:
    lines += [context, '']
  lines += [f'Test {rec.METRIC_NAMES[metric]} over n = {n} test examples, stitch layer `{stitch_layer}`, stitch points '
            f'{", ".join(f"L{l}" for l in layers)}.' + (
                f' One standard error is about {100 * _se(0.8, n):.1f} points at 80% accuracy; a difference under two '
                'standard errors is not distinguishable from noise.' if metric == 'accuracy' else ''), '',
            '## Findings', '']

  def count(pred, keys):
    hits = [k for k in keys if pred(k)]
    return f'{len(hits)} of {len(keys)}', hits

  for s, t in cross:
    keys = [l for l in layers if all((a, b, l) in acc['ffm_tlt'] for a, b in ((s, t), (s, s), (t, t)))]
    if keys:
      def beats(l):
        v = acc['ffm_tlt'][(s, t, l)]
        return all(v - acc['ffm_tlt'][(a, a, l)] > 2 * se(v) for a in (s, t))
      c, hits = count(beats, keys)
      lines.append(f'- **Stitched vs self-stitched ({s}{rec.PAIR_ARROW}{t}, FFM→TLT):** beats both self-stitches {margin} '
                   f'at {c} layers{" (L" + ", L".join(map(str, hits)) + ")" if hits else ""}.')
    keys = [l for l in layers if ('ffm', 'final_distance', s, t, l) in dist and ('lfm', 'final_distance', s, t, l) in dist]
    if keys:
      c, _ = count(lambda l: dist[('ffm', 'final_distance', s, t, l)] < dist[('lfm', 'final_distance', s, t, l)], keys)
      lines.append(f'- **FFM vs LFM ({s}{rec.PAIR_ARROW}{t}):** FFM reaches the smaller final-feature distance at {c} '
                   f'layers (at L{keys[0]}: {dist[("ffm", "final_distance", s, t, keys[0])]:.3g} vs '
                   f'{dist[("lfm", "final_distance", s, t, keys[0])]:.3g}).')
      c, _ = count(lambda l: dist[('lfm', 'layer_distance', s, t, l)] < dist[('ffm', 'layer_distance', s, t, l)],
                   [l for l in keys if ('lfm', 'layer_distance', s, t, l) in dist and ('ffm', 'layer_distance', s, t, l) in dist])
      lines.append(f'  LFM reaches the smaller distance at the stitch point at {c} layers.')
      keys = [l for l in keys if (s, t, l) in acc['ffm'] and (s, t, l) in acc['lfm']]
      c, _ = count(lambda l: acc['ffm'][(s, t, l)] > acc['lfm'][(s, t, l)], keys)
      lines.append(f'  Its probe is the more accurate at {c} layers.' if metric == 'accuracy' else
                   f'  Its decoder scores the higher mIoU at {c} layers.')
    keys = [l for l in layers if (s, t, l) in acc['tlt'] and (s, t, l) in acc['ffm_tlt']]
    if keys:
      diffs = {l: acc['ffm_tlt'][(s, t, l)] - acc['tlt'][(s, t, l)] for l in keys}
      c, _ = count(lambda l: diffs[l] > 0, keys)
      lines.append(f'- **FFM initialisation for TLT ({s}{rec.PAIR_ARROW}{t}):** FFM→TLT is ahead of TLT from a random stitch '
                   f'at {c} layers; at the shallowest, L{keys[0]}, by {100 * diffs[keys[0]]:+.1f} points.')
    best = max(((v, l) for (a, b, l), v in acc['ffm_tlt'].items() if (a, b) == (s, t)), default=None)
    if best is not None and s in lp and t in lp:
      above = [b for b in (s, t) if best[0] - lp[b] > 2 * se(best[0])]
      lines.append(f'- **Against linear probes ({s}{rec.PAIR_ARROW}{t}):** the best stitched model (L{best[1]}) reaches '
                   f'{rec.pct(best[0])}% against {rec.pct(lp[s])}% ({s}) and {rec.pct(lp[t])}% ({t}); above '
                   f'{" and ".join(above) if above else "neither"} {margin}.')
  lines += ['', '## What it does not show', '',
            '- Robustness across seeds: every number comes from one seed.',
            '- Other schedules: one run\'s epochs, batch sizes and learning rates; the probes are trained for as long '
            'as the stitches, which may be short of their converged accuracy.',
            '- Claims the counts above do not support: where a count is low, the paper\'s corresponding finding is not '
            'reproduced by this run.']
  return '\n'.join(lines) + '\n'
