"""Tables in the layouts of the paper's Tables 1, 2 and 4, and accuracy-per-layer plots (Figures 3-5).

All of it is derived from `results.json` records, so a report can be rebuilt from a
finished workdir: `python -c "import stitchjax.report as r; r.write('workdir')"`.
"""
import json
import pathlib

from stitchjax import agreement, atomic, scouting
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
  the setup, when given) from workdir/results.json, and the scout's tables, scout.png and its section of
  report.md from workdir/scout.json (with scout_validation.json where there is one); returns the
  one-screen summary."""
  workdir = pathlib.Path(workdir)
  parts, report, summary = [], [], []
  if (workdir / 'results.json').exists():
    records = json.loads((workdir / 'results.json').read_text())
    kinds = list(dict.fromkeys(r['stitch_layer'] for r in records if r['stitch_layer']))
    for kind in kinds:
      parts += [table1(records, kind), table2(records, kind), table4(records, kind), distances_table(records, kind)]
      plot(records, workdir / f'accuracy_{kind}.png', kind)
    if not kinds:
      parts.append(table2(records, 'none'))
    if kinds:
      report.append(findings(records, kinds[0], context))
    summary.append('\n'.join(summary_table(records, kind) for kind in kinds) or parts[0])
  if (workdir / 'scout.json').exists():
    saved = json.loads((workdir / 'scout.json').read_text())
    path = workdir / 'scout_validation.json'
    validation = json.loads(path.read_text()) if path.exists() else None
    parts.append(scout_tables(saved, validation))
    scout_plot(saved, validation, workdir / 'scout.png')
    report.append(scout_findings(saved, validation, context if not report else None))
    summary.append(recommended_table(saved))
  if not parts:
    raise FileNotFoundError(f'{workdir} holds neither results.json nor scout.json: nothing to report')
  atomic.write_text(workdir / 'tables.md', '\n'.join(parts))
  if report:
    atomic.write_text(workdir / 'report.md', '\n'.join(report))
  return '\n'.join(summary)


# The scout (stitchjax/scouting.py) and its agreement with the protocol (stitchjax/agreement.py).

def _proxy_values(records, proxy: str) -> dict:
  return {(r['source'], r['target'], r['layer']): r['value'] for r in records if r['metric'] == proxy}


def scout_tables(saved: dict, validation: dict | None) -> str:
  """Every proxy per route and layer, the recommended layers and, with a validation, its tables."""
  records = saved['records']
  layers = rec.layers(records)
  rows = []
  for proxy in scouting.PROXIES:
    values = _proxy_values(records, proxy)
    rows += [[proxy, f'{s}{rec.PAIR_ARROW}{t}'] + [f'{values[(s, t, l)]:.3g}' if (s, t, l) in values else '–'
                                                    for l in layers] for s, t in rec.routes(records)]
  parts = [rec.table(['proxy', 'route'] + [f'L{l}' for l in layers], rows,
                     'The scout: closed-form proxies per stitch layer (validation split; CKA on the training '
                     f'subsample of {saved["subsample"]} images)'), recommended_table(saved)]
  if validation is not None:
    parts.append(agreement.tables(validation))
  return '\n'.join(parts)


def recommended_table(saved: dict) -> str:
  values = _proxy_values(saved['records'], saved['rank_by'])
  rows = [[route.replace(':', rec.PAIR_ARROW), ', '.join(f'L{l} ({values[(*route.split(":"), l)]:.3g})' for l in layers)]
          for route, layers in saved['recommended'].items()]
  return rec.table(['route', f'recommended layers ({saved["rank_by"]}): a pair\'s best first, a self-stitch at its '
                              'pairs\' layers'], rows,
                   'The scout\'s recommendation: run `--config.layers=scout:K` to stitch each pair at its K best')


def scout_findings(saved: dict, validation: dict | None, context: str | None) -> str:
  """report.md's section on the scout: its recommendation and, with a validation, how far to trust it."""
  lines = ['# Where to stitch: the scout', '']
  if context:
    lines += [context, '']
  lines += [f'Closed-form proxies at every layer of every route, fitted on {saved["subsample"]} training images '
            f'and scored on the validation split (docs/scout.md). Ranked by `{saved["rank_by"]}`:', '']
  lines += [f'- {route.replace(":", rec.PAIR_ARROW)}: ' + ', '.join(f'L{l}' for l in layers)
            for route, layers in saved['recommended'].items()]
  if validation is None:
    lines += ['', 'Not validated here: the workdir holds no protocol results at the scouted layers. Until it does, '
              'the ranking is a hypothesis (docs/scout.md says what each proxy has been found worth).']
    return '\n'.join(lines) + '\n'
  proxies = validation['proxies']
  best = agreement.best_proxy(validation)
  pooled, top = proxies[best]['pooled'], proxies[best]['top1'].values()
  lo, hi = pooled['rho_ci']
  lines += ['', f'## Against the protocol ({validation["method"]}, {validation["cells"]} cells)', '',
            f'- The best proxy by pooled Spearman ρ is `{best}`: ρ = {pooled["rho"]:.2f} (95% CI {lo:.2f} to '
            f'{hi:.2f}); the target ρ ≥ 0.8 is {"met" if pooled["rho"] >= 0.8 else "not met"}.',
            f'- Its top-1 layer is within one standard error of the best layer on {sum(t["within_se"] for t in top)} '
            f'of {len(top)} routes.',
            f'- `{saved["rank_by"]}`, the ranking used: ρ = {proxies[saved["rank_by"]]["pooled"]["rho"]:.2f}; '
            f'ranking the shallower stitch first, with no measurement, gives ρ = '
            f'{proxies[agreement.DEPTH]["pooled"]["rho"]:.2f}.', '',
            'The intervals resample both the test examples and the cells; with few layers per route the within-route '
            'intervals are wide (tables.md).']
  return '\n'.join(lines) + '\n'


def scout_plot(saved: dict, validation: dict | None, path: pathlib.Path) -> None:
  """Each proxy against the layer, a line per route; with a validation, the protocol's test metric beside."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  records = saved['records']
  panels = list(scouting.PROXIES) + (['protocol'] if validation is not None else [])
  fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.2), squeeze=False)
  for ax, panel in zip(axes[0], panels):
    if panel == 'protocol':
      values = {tuple(k.split(':')[:2]) + (int(k.split(':')[2]),): v for k, v in validation['metric_values'].items()}
      title = f'test {rec.METRIC_NAMES[validation["metric"]]} ({validation["method"]})'
    else:
      values, title = _proxy_values(records, panel), panel
    for s, t in rec.routes(records):
      pts = sorted((l, v) for (a, b, l), v in values.items() if (a, b) == (s, t))
      if pts:
        ax.plot(*zip(*pts), '-o' if s != t else ':x', ms=3, label=f'{s}{rec.PAIR_ARROW}{t}')
    ax.set(title=title, xlabel='stitch layer')
  axes[0][0].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


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
