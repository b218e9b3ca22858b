"""The paper's analyses from a finished workdir: Figures 2-6 as PNGs and the prediction analysis of
appendix B.4 (Table 12), all written to analyses.md.

- Figure 2 (§3.1): mean feature distance at the stitch point and at the final layer, LFM vs FFM.
- Figure 3 (§3.1): linear-probe accuracy of the LFM and FFM stitched models, with each backbone's probe.
- Figure 4 (§3.2): FFM→TLT accuracy against each backbone's linear probe.
- Figure 5 (§4): the stitched model against its two self-stitched baselines.
- Figure 6 (§4): Figure 5 for every (source, target) pair, sources as rows and targets as columns.
- Table 12 (appendix B.4): per test image, is the stitched model right where its self-stitched
  baselines are (preserve), right where both are wrong (rescue), or wrong where one is right
  (interference); and, where the baselines disagree, which one it follows.

Inputs are `results.json`, `cells/<cell id>/test_predictions.npy` and `test_labels.npy` (both
written by stitchjax/protocol.py), so `python run.py --config configs/X.py
--config.analysis_only=True` rebuilds everything without data or backbones.
"""
import json
import pathlib

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from stitchjax import atomic
from stitchjax import records as rec
from stitchjax.records import Cell
from stitchjax.report import distances_table, table2, table4

# (source self-stitch, target self-stitch, stitched) right (R) or wrong (W): the six non-trivial
# columns of Table 12. The paper orders its rows by model (DINOv2 first); here they are by role, so
# for SigLIP2→DINOv2 these are the paper's columns 1-6 as printed.
PRESERVE = ('RWR', 'WRR')
RESCUE = ('WWR',)
INTERFERENCE = ('RRW', 'RWW', 'WRW')
TRIVIAL = ('RRR', 'WWW')  # discarded by the paper, counted here so that the row adds up to n


def prediction_analysis(labels, source_self, target_self, stitched) -> dict[str, int]:
  """Table 12 counts of one stitched model against its two self-stitched baselines.

  All arguments are (N,) class indices over the same test images. Returns the count of each
  R/W pattern in PRESERVE + RESCUE + INTERFERENCE + TRIVIAL, their totals `preserve`, `rescue`
  and `interference`, and two readings of whom the stitched model follows when the baselines disagree:
  - `follows_source` / `follows_target`: exactly one baseline is right, and the stitched model is
    right or wrong with it (RWR + WRW, and WRR + RWW): the paper's reading of its table;
  - `label_follows_{source,target,neither}`: the baselines predict different classes, and the
    stitched model predicts the one or the other class, or a third.
  """
  labels, source_self, target_self, stitched = map(np.asarray, (labels, source_self, target_self, stitched))
  if not labels.shape == source_self.shape == target_self.shape == stitched.shape:
    raise ValueError(f'prediction shapes differ: labels {labels.shape}, source self-stitch {source_self.shape}, '
                     f'target self-stitch {target_self.shape}, stitched {stitched.shape}')
  right = [p == labels for p in (source_self, target_self, stitched)]
  counts = {}
  for pattern in PRESERVE + RESCUE + INTERFERENCE + TRIVIAL:
    hit = np.ones(labels.shape, bool)
    for r, c in zip(right, pattern):
      hit &= r if c == 'R' else ~r
    counts[pattern] = int(hit.sum())
  counts |= {name: sum(counts[p] for p in patterns) for name, patterns in
             (('preserve', PRESERVE), ('rescue', RESCUE), ('interference', INTERFERENCE))}
  counts['follows_source'] = counts['RWR'] + counts['WRW']
  counts['follows_target'] = counts['WRR'] + counts['RWW']
  differ = source_self != target_self
  counts['label_follows_source'] = int((differ & (stitched == source_self)).sum())
  counts['label_follows_target'] = int((differ & (stitched == target_self)).sum())
  counts['label_follows_neither'] = int(differ.sum()) - counts['label_follows_source'] - counts['label_follows_target']
  return counts


def table12(records, predictions: dict[str, np.ndarray], labels: np.ndarray, stitch_layer: str) -> str:
  """Table 12 for every cross pair, method and layer whose stitched model and both self-stitched
  baselines (same method, layer and stitch layer) have test predictions; `predictions` maps Cell.id."""
  rows = []
  for method in ('ffm_tlt', 'tlt', 'ffm', 'lfm'):  # the paper's analysis is of FFM→TLT
    acc = rec.test_values(records, method=method, stitch_layer=stitch_layer)
    for s, t in [r for r in rec.routes(records) if r[0] != r[1]]:
      for layer in rec.layers(records):
        routes = ((s, s), (t, t), (s, t))
        if not all((*route, layer) in acc for route in routes):
          continue
        preds = [predictions[Cell(*route, layer, method, stitch_layer).id] for route in routes]
        c = prediction_analysis(labels, *preds)
        rows.append([f'{s}{rec.PAIR_ARROW}{t}', method, f'L{layer}']
                    + [str(c[p]) for p in PRESERVE + RESCUE + INTERFERENCE + TRIVIAL]
                    + [str(c[k]) for k in ('preserve', 'rescue', 'interference', 'follows_source', 'follows_target',
                                           'label_follows_source', 'label_follows_target', 'label_follows_neither')]
                    + [rec.pct(acc[(*route, layer)]) for route in routes])
  header = (['pair', 'method', 'layer'] + list(PRESERVE + RESCUE + INTERFERENCE + TRIVIAL)
            + ['preserve', 'rescue', 'interference', 'follows source', 'follows target', 'label: source',
               'label: target', 'label: neither', 'acc source self', 'acc target self', 'acc stitched'])
  return rec.table(header, rows, f'Table 12: prediction analysis against the self-stitched baselines ({stitch_layer}, test)')


# Figures. Each returns a matplotlib Figure (None when the records hold nothing to plot); a panel is
# (title, [(label, line style, [(layer, value), ...]), ...], {backbone: linear-probe accuracy}).

PROBE_COLORS = ('gray', 'black', 'tab:brown', 'tab:purple')


def _points(values: dict, route) -> list[tuple[int, float]]:
  """Sorted (layer, value) of one (source, target) route of a {(source, target, layer): value} dict."""
  return sorted((layer, v) for (s, t, layer), v in values.items() if (s, t) == tuple(route))


def _figure(grid, ylabel: str, log: bool = False, sharey: bool = False) -> Figure | None:
  """Panels in rows; a None panel is a pair that was not run, drawn empty so the grid stays square.
  None when there is no panel at all."""
  if not any(p for row in grid for p in row):
    return None
  fig = Figure(figsize=(4.2 * len(grid[0]), 3.4 * len(grid)))
  FigureCanvasAgg(fig)
  axes = fig.subplots(len(grid), len(grid[0]), squeeze=False, sharey=sharey)
  # A backbone's probe keeps one colour in every panel, whether it is the panel's source or target.
  probed = list(dict.fromkeys(name for row in grid for p in row if p for name in p[2]))
  for row, ax_row in zip(grid, axes):
    for panel, ax in zip(row, ax_row):
      if panel is None:
        # Axis off, not empty ticks: under sharey, clearing this panel's ticks would clear every panel's.
        ax.set_axis_off()
        ax.text(0.5, 0.5, 'not run', ha='center', va='center', transform=ax.transAxes, color='gray')
        continue
      title, lines, probes = panel
      for label, style, pts in lines:
        if pts:
          ax.plot(*zip(*pts), style, label=label)
      for name, v in probes.items():
        color = PROBE_COLORS[probed.index(name) % len(PROBE_COLORS)]
        ax.axhline(v, ls='--', lw=1, color=color, label=f'{name} linear probe')
      if log:
        ax.set_yscale('log')
      ax.set(title=title, xlabel='stitch layer', ylabel=ylabel,
             xticks=sorted({layer for _, _, pts in lines for layer, _ in pts}))
      ax.legend(fontsize=6)
  fig.tight_layout()
  return fig


def _cross_routes(records) -> list[tuple[str, str]]:
  return [r for r in rec.routes(records) if r[0] != r[1]]


def _probes(records, *backbones) -> dict[str, float]:
  lp = {s: 100 * v for (s, _, _), v in rec.test_values(records, method='lp').items()}
  return {b: lp[b] for b in dict.fromkeys(backbones) if b in lp}


def _accuracy(records, method: str, stitch_layer: str) -> dict:
  return {k: 100 * v for k, v in rec.test_values(records, method=method, stitch_layer=stitch_layer).items()}


def figure2(records, stitch_layer: str) -> Figure | None:
  """Mean squared feature distance at the stitch point and at the final layer, LFM and FFM (test split)."""
  dist = {(m, d): {(r['source'], r['target'], r['layer']): r['value'] for r in records
                   if (r['method'], r['metric'], r['stitch_layer']) == (m, d, stitch_layer)}
          for m in ('lfm', 'ffm') for d in ('layer_distance', 'final_distance')}
  panels = [(f'{s}{rec.PAIR_ARROW}{t} ({stitch_layer})',
             [(f'{m.upper()} {where}', style, _points(dist[(m, d)], (s, t)))
              for m, color in (('lfm', 'C0'), ('ffm', 'C1'))
              for d, where, style in (('layer_distance', 'at stitch point', f'-o{color}'),
                                      ('final_distance', 'at final layer', f'--s{color}'))], {})
            for s, t in _cross_routes(records)]
  panels = [p for p in panels if any(pts for _, _, pts in p[1])]
  # The distances span orders of magnitude (LFM's at the stitch point are tiny); log only if it can.
  positive = all(v > 0 for d in dist.values() for v in d.values())
  return _figure([panels], 'mean squared distance', log=positive)


def _accuracy_figure(records, stitch_layer: str, methods: dict[str, str]) -> Figure | None:
  """Test accuracy per stitch layer of each cross pair for `methods` {method: label}, with the probes."""
  acc = {m: _accuracy(records, m, stitch_layer) for m in methods}
  panels = [(f'{s}{rec.PAIR_ARROW}{t} ({stitch_layer})',
             [(label, '-o', _points(acc[m], (s, t))) for m, label in methods.items()], _probes(records, s, t))
            for s, t in _cross_routes(records)]
  panels = [p for p in panels if any(pts for _, _, pts in p[1])]
  return _figure([panels], 'test accuracy (%)')


def figure3(records, stitch_layer: str) -> Figure | None:
  """Linear-probe accuracy of the LFM and FFM stitched models (both label-free), with each backbone's probe."""
  return _accuracy_figure(records, stitch_layer, {'lfm': 'LFM + linear probe', 'ffm': 'FFM + linear probe'})


def figure4(records, stitch_layer: str) -> Figure | None:
  """FFM→TLT accuracy against each backbone's linear probe."""
  return _accuracy_figure(records, stitch_layer, {'ffm_tlt': 'FFM→TLT'})


def _stitched_vs_self(acc: dict, lp_records, s: str, t: str, stitch_layer: str):
  """The Figure 5 panel of s→t: stitched, both self-stitches and both probes; None when nothing was run."""
  routes = list(dict.fromkeys([(s, t), (s, s), (t, t)]))  # one route on the diagonal (s = t)
  lines = [(f'{a}{rec.PAIR_ARROW}{b}' + (' (self)' if a == b else ''), style, _points(acc, (a, b)))
           for (a, b), style in zip(routes, ('-o', ':x', ':+'))]
  if not _points(acc, (s, t)):
    return None
  return f'{s}{rec.PAIR_ARROW}{t} ({stitch_layer})', lines, _probes(lp_records, s, t)


def figure5(records, stitch_layer: str, method: str = 'ffm_tlt') -> Figure | None:
  """The stitched model against its source's and its target's self-stitched models."""
  acc = _accuracy(records, method, stitch_layer)
  panels = [p for s, t in _cross_routes(records) if (p := _stitched_vs_self(acc, records, s, t, stitch_layer))]
  return _figure([panels], f'test accuracy (%), {method}')


def figure6(records, stitch_layer: str, method: str = 'ffm_tlt') -> Figure | None:
  """Figure 5's panel for every (source, target) of the backbones run: sources as rows, targets as columns."""
  if not _cross_routes(records):
    return None
  acc = _accuracy(records, method, stitch_layer)
  backbones = list(dict.fromkeys(b for route in rec.routes(records) for b in route))
  grid = [[_stitched_vs_self(acc, records, s, t, stitch_layer) for t in backbones] for s in backbones]
  return _figure(grid, f'test accuracy (%), {method}', sharey=True)


FIGURES = {2: figure2, 3: figure3, 4: figure4, 5: figure5, 6: figure6}
# The figures' numbers in report.py's table layouts; table2 holds those of Figures 4, 5 and 6.
NUMBERS = {2: distances_table, 3: table4, 4: table2}


# Files.

def write(workdir) -> str:
  """Writes figure<2..6>_<stitch layer>.png and analyses.md from a finished workdir; returns a summary."""
  workdir = pathlib.Path(workdir)
  results = workdir / 'results.json'
  if not results.exists():
    raise FileNotFoundError(f'{results} is missing: the analyses need the workdir of a finished stitch run')
  records = json.loads(results.read_text())
  labels, predictions = rec.load_predictions(workdir, records)
  parts = ['# Analyses: the paper\'s Figures 2-6 and Table 12', '',
           'From results.json' + ('' if labels is None else
                                  f', the per-cell test predictions and test_labels.npy (n = {len(labels)} test images)')
           + '.', '']
  kinds = list(dict.fromkeys(r['stitch_layer'] for r in records if r['stitch_layer']))
  written = []
  for kind in kinds:
    for n, make in FIGURES.items():
      parts.append(f'## Figure {n} ({kind})\n')
      fig = make(records, kind)
      if fig is None:
        parts.append('Nothing to plot: results.json has no cross-pair test accuracies (Figure 2: distances) '
                     'for it.\n')
        continue
      name = f'figure{n}_{kind}.png'
      fig.savefig(workdir / name, dpi=110)
      written.append(name)
      parts += [f'![Figure {n}]({name})\n', NUMBERS[n](records, kind) if n in NUMBERS else 'Numbers: Figure 4\'s table.\n']
    parts += [table12(records, predictions, labels, kind), TABLE12_KEY]
  atomic.write_text(workdir / 'analyses.md', '\n'.join(parts))
  return f'analyses.md and {", ".join(written) or "no figures"} in {workdir}'


TABLE12_KEY = """Columns: R/W is right/wrong for (source self-stitch, target self-stitch, stitched), all at the
same layer, method and stitch layer. Preserve = RWR + WRR, rescue = WWR, interference = RRW + RWW + WRW;
RRR and WWW are the trivial cases the paper discards. Where exactly one baseline is right, the stitched model
*follows the source* when it is right or wrong with the source's self-stitch (RWR + WRW) and *follows the
target* otherwise (WRR + RWW), the paper's reading of its Table 12. `label:` columns count, among images where
the two baselines predict different classes, whether the stitched model predicts the source self-stitch's
class, the target's, or neither.
"""
