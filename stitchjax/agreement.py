"""How far the scout's proxies (stitchjax/scouting.py) agree with the full protocol, from one workdir holding both.

The ground truth is the protocol's test metric (accuracy or mIoU) of one method, by default FFM→TLT, at
every (source, target, layer) cell the scout also measured. For each proxy, oriented so that higher
predicts better:

- Spearman's ρ and Kendall's τ-b with the test metric, pooled over every cell and within each route (over
  its layers), with 95% bootstrap intervals. Each of the replicates resamples the test examples (every
  cell's metric recomputed on the same resampled test set from its saved test predictions, so the
  protocol's own noise is in the interval) and the cells (pooled: all of them; within a route: its layers).
- Direction: for every pair run both ways, at how many layers the proxy orders a→b and b→a as the test
  metric does.
- Top-1: per route, the test metric at the proxy's best layer next to the best layer's, and whether it is
  within one standard error (the bootstrap's) of it.

    result = agreement.validate(workdir)     # from results.json, scout.json and the cells' predictions
    print(agreement.tables(result))
"""
import json
import pathlib

import numpy as np
from scipy import stats

from stitchjax import atomic, records as rec
from stitchjax.records import Cell
from stitchjax.scouting import PROXIES

REPLICATES = 2000
MIN_CELLS = 3
# A reference beside the proxies, not one of them: the shallower stitch ranked first, which needs no
# measurement at all. A proxy earns its cost only where it beats this.
DEPTH = 'shallower first (reference)'
COUNTS = ('intersection', 'pred_area', 'label_area')


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Spearman's ρ of each row pair of x, y (R, n), ties averaged; nan where a row is constant."""
  return _pearson(stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1))


def _pearson(x, y):
  x, y = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
  with np.errstate(invalid='ignore', divide='ignore'):
    return (x * y).sum(-1) / np.sqrt((x * x).sum(-1) * (y * y).sum(-1))


def kendall(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Kendall's τ-b of each row pair of x, y (R, n); nan where a row is constant."""
  n = x.shape[-1]
  i, j = np.triu_indices(n, 1)
  sx, sy = np.sign(x[..., i] - x[..., j]), np.sign(y[..., i] - y[..., j])
  with np.errstate(invalid='ignore', divide='ignore'):
    return (sx * sy).sum(-1) / np.sqrt((sx != 0).sum(-1) * (sy != 0).sum(-1))


def truth(workdir: pathlib.Path, results: list[dict], cells: list[Cell], replicates: int, seed: int) -> tuple:
  """(the test metric of each cell (n,), the same on `replicates` resamplings of the test examples (R, n)),
  from each cell's saved test predictions (classification) or per-image pixel counts (segmentation)."""
  rng = np.random.default_rng(seed)
  if rec.task_metric(results) == 'accuracy':
    labels, predictions = rec.load_predictions(workdir, results)
    correct = np.stack([predictions[c.id] == labels for c in cells]).astype(np.float64)  # (n, N)
    weights = _multiplicities(rng, len(labels), replicates)
    return correct.mean(1), weights @ correct.T / len(labels)
  counts = [np.load(workdir / 'cells' / c.id / 'test_counts.npz') for c in cells]
  weights = _multiplicities(rng, len(counts[0]['intersection']), replicates)
  metric = lambda w: np.stack([_miou(w, c) for c in counts], -1)
  return metric(np.ones((1, weights.shape[1])))[0], metric(weights)


def _multiplicities(rng, n: int, replicates: int) -> np.ndarray:
  """(R, n): how often each of n examples is drawn in each bootstrap resample of n."""
  draws = rng.integers(0, n, (replicates, n))
  return np.stack([np.bincount(row, minlength=n) for row in draws]).astype(np.float64)


def _miou(weights: np.ndarray, counts) -> np.ndarray:
  """mIoU (R,) of per-image pixel counts summed with weights (R, N), as segmentation.miou sums them."""
  inter, pred, label = (weights @ np.asarray(counts[k], np.float64) for k in COUNTS)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.nanmean(inter / (pred + label - inter), -1)


def _correlations(x: np.ndarray, y: np.ndarray, y_rep: np.ndarray, rng) -> dict:
  """ρ and τ of proxy x against metric y over n cells, with intervals from resampling cells (and, through
  y_rep (R, n), the test examples)."""
  idx = rng.integers(0, len(x), y_rep.shape)
  xs, ys = x[idx], np.take_along_axis(y_rep, idx, 1)
  out = {}
  for name, f in (('rho', spearman), ('tau', kendall)):
    out[name] = float(f(x[None], y[None])[0])
    samples = f(xs, ys)
    # A proxy constant over the cells ranks nothing: no interval either.
    out[f'{name}_ci'] = [float(v) for v in np.nanpercentile(samples, [2.5, 97.5])] if np.isfinite(samples).any() \
        else [float('nan')] * 2
  return out


def _paired(workdir: pathlib.Path, method: str, stitch_layer: str | None) -> tuple:
  """(results, scout records, stitch layer, the (source, target, layer) keys with both a result and every proxy)."""
  results = json.loads((workdir / 'results.json').read_text())
  scouted = json.loads((workdir / 'scout.json').read_text())['records']
  stitch_layer = stitch_layer or next((r['stitch_layer'] for r in results if r['method'] == method), None)
  proxy = {(r['metric'], r['source'], r['target'], r['layer']): r['value'] for r in scouted}
  measured = rec.scores(results, method=method, stitch_layer=stitch_layer)
  keys = sorted(k for k in measured if all((p, *k) in proxy for p in PROXIES))
  return results, proxy, stitch_layer, keys


def validate(workdir, method: str = 'ffm_tlt', stitch_layer: str | None = None, replicates: int = REPLICATES,
             seed: int = 0) -> dict:
  """The scout's agreement with `method`'s test metric in `workdir` (see the module docstring)."""
  workdir = pathlib.Path(workdir)
  results, proxy, stitch_layer, keys = _paired(workdir, method, stitch_layer)
  if len(keys) < MIN_CELLS:
    raise ValueError(f'{workdir}: only {len(keys)} cells have both a {method} test result ({stitch_layer}) and '
                     'the scout\'s proxies; run the protocol at the scouted layers first')
  cells = [Cell(s, t, l, method, stitch_layer) for s, t, l in keys]
  y, y_rep = truth(workdir, results, cells, replicates, seed)
  routes = list(dict.fromkeys((s, t) for s, t, _ in keys))
  rng = np.random.default_rng(seed + 1)
  out = {'method': method, 'stitch_layer': stitch_layer, 'metric': rec.task_metric(results), 'cells': len(keys),
         'replicates': replicates, 'metric_values': {f'{s}:{t}:{l}': float(v) for (s, t, l), v in zip(keys, y)},
         'proxies': {}}
  oriented = {name: np.array([proxy[(name, *k)] for k in keys]) * (1 if higher else -1) for name, higher in PROXIES.items()}
  oriented[DEPTH] = -np.array([l for _, _, l in keys], float)
  cross = np.array([s != t for s, t, _ in keys])
  for name, x in oriented.items():
    result = {'pooled': _correlations(x, y, y_rep, rng), 'routes': {}, 'top1': {}, 'direction': {}}
    if 3 <= cross.sum() < len(keys):
      result['pooled_cross'] = _correlations(x[cross], y[cross], y_rep[:, cross], rng)
    for s, t in routes:
      at = np.array([(a, b) == (s, t) for a, b, _ in keys])
      layers = [l for (a, b, l), here in zip(keys, at) if here]
      result['routes'][f'{s}:{t}'] = _correlations(x[at], y[at], y_rep[:, at], rng)
      pick, best = int(np.argmax(x[at])), int(np.argmax(y[at]))
      se = float(np.std(y_rep[:, at][:, best]))
      result['top1'][f'{s}:{t}'] = {'layer': layers[pick], 'value': float(y[at][pick]), 'best_layer': layers[best],
                                    'best': float(y[at][best]), 'se': se,
                                    'within_se': bool(y[at][best] - y[at][pick] <= se)}
    value = {k: v for k, v in zip(keys, x)}
    truth_of = {k: v for k, v in zip(keys, y)}
    for s, t in routes:
      if s < t and (t, s) in routes:
        layers = [l for a, b, l in keys if (a, b) == (s, t) and (t, s, l) in value]
        agree = [np.sign(value[(s, t, l)] - value[(t, s, l)]) == np.sign(truth_of[(s, t, l)] - truth_of[(t, s, l)])
                 for l in layers]
        result['direction'][f'{s}:{t}'] = {'agree': int(sum(agree)), 'layers': len(layers)}
    out['proxies'][name] = result
  return out


def update(workdir, method: str = 'ffm_tlt') -> dict | None:
  """Writes workdir/scout_validation.json where the workdir holds the scout's proxies and `method`'s results at
  MIN_CELLS or more of its cells, and returns it; None where there is nothing to validate against yet."""
  workdir = pathlib.Path(workdir)
  if not ((workdir / 'results.json').exists() and (workdir / 'scout.json').exists()):
    return None
  if len(_paired(workdir, method, None)[3]) < MIN_CELLS:
    return None
  result = validate(workdir, method)
  atomic.write_text(workdir / 'scout_validation.json', json.dumps(result, indent=1))
  return result


def _interval(r: dict, name: str) -> str:
  lo, hi = r[f'{name}_ci']
  return '– (constant)' if np.isnan(r[name]) else f'{r[name]:.2f} [{lo:.2f}, {hi:.2f}]'


def best_proxy(result: dict) -> str:
  """The proxy with the highest pooled ρ (the depth reference is not a proxy)."""
  rho = lambda p: np.nan_to_num(result['proxies'][p]['pooled']['rho'], nan=-2.0)
  return max((p for p in result['proxies'] if p != DEPTH), key=rho)


def tables(result: dict) -> str:
  """The validation as markdown: the summary per proxy, ρ per route, and the top-1 layers."""
  metric = rec.METRIC_NAMES[result['metric']]
  best = best_proxy(result)
  rows = []
  for name, r in result['proxies'].items():
    top = r['top1'].values()
    rows.append([name, _interval(r['pooled'], 'rho'), _interval(r['pooled'], 'tau'),
                 _interval(r['pooled_cross'], 'rho') if 'pooled_cross' in r else '–',
                 ', '.join(f'{d["agree"]}/{d["layers"]}' for d in r['direction'].values()) or '–',
                 f'{sum(t["within_se"] for t in top)}/{len(top)}'])
  parts = [rec.table(['proxy', 'pooled ρ [95% CI]', 'pooled τ [95% CI]', 'ρ, cross pairs only', 'direction (layers '
                      'agreeing)', 'top-1 within 1 SE (routes)'], rows,
                     f'The scout against {result["method"]} ({result["stitch_layer"]}), test {metric}, '
                     f'{result["cells"]} cells, {result["replicates"]} bootstrap replicates')]
  routes = list(result['proxies'][best]['routes'])
  parts.append(rec.table(['proxy'] + [r.replace(':', rec.PAIR_ARROW) for r in routes],
                         [[name] + [_interval(r['routes'][route], 'rho') for route in routes]
                          for name, r in result['proxies'].items()], 'Spearman ρ within each route [95% CI]'))
  top = result['proxies'][best]['top1']
  parts.append(rec.table(['route', f'{best}\'s layer', f'its {metric} %', 'best layer', f'best {metric} % ± SE'],
                         [[route.replace(':', rec.PAIR_ARROW), f'L{t["layer"]}', rec.pct(t['value']),
                           f'L{t["best_layer"]}', f'{rec.pct(t["best"])} ± {100 * t["se"]:.1f}']
                          for route, t in top.items()], f'Top-1 layers of the best proxy by pooled ρ ({best})'))
  return '\n'.join(parts)
