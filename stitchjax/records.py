"""Results as records: one dict per (cell, split, metric) in a workdir's results.json, and what reads them.

    {'source': 'dinov2', 'target': 'siglip2', 'layer': 14, 'method': 'ffm_tlt', 'stitch_layer': 'mlp',
     'split': 'test', 'metric': 'accuracy', 'value': 0.83, 'n': 4000, 'lr': 0.001}

A probe (`lp`) has target = source and layer = stitch_layer = None. Extra fields (n, lr, stitch_lr,
error) follow the eight of FIELDS. report.py, analysis.py, agreement.py and tree.py read records with
these filters and write tables with `table`; `load_predictions` reads the test predictions cells saved.
"""
import dataclasses
import pathlib

import numpy as np

FIELDS = ('source', 'target', 'layer', 'method', 'stitch_layer', 'split', 'metric', 'value')
PAIR_ARROW = '→'
METRIC_NAMES = {'accuracy': 'accuracy', 'miou': 'mIoU'}


@dataclasses.dataclass(frozen=True)
class Cell:
  """One protocol cell: a (source, target, layer, method, stitch layer) and the records it writes."""
  source: str
  target: str
  layer: int | None
  method: str
  stitch_layer: str | None

  @property
  def id(self) -> str:
    if self.method == 'lp':
      return f'lp__{self.source}'
    return f'{self.source}__{self.target}__L{self.layer}__{self.method}__{self.stitch_layer}'

  @classmethod
  def of(cls, record: dict) -> 'Cell':
    return cls(*(record[k] for k in FIELDS[:5]))

  def record(self, split: str, metric: str, value: float, **extra) -> dict:
    return {'source': self.source, 'target': self.target, 'layer': self.layer, 'method': self.method,
            'stitch_layer': self.stitch_layer, 'split': split, 'metric': metric, 'value': float(value), **extra}


# Filters.
def test_values(records, metric: str = 'accuracy', **match) -> dict:
  """(source, target, layer) -> test `metric` of the records matching `match`."""
  return {(r['source'], r['target'], r['layer']): r['value'] for r in records
          if r['split'] == 'test' and r['metric'] == metric and all(r.get(k) == v for k, v in match.items())}


def task_metric(records) -> str:
  """A workdir's test metric: 'miou' for segmentation (Table 2's ADE20K column), else 'accuracy'."""
  return 'miou' if any(r['metric'] == 'miou' for r in records) else 'accuracy'


def metric_name(records) -> str:
  return METRIC_NAMES[task_metric(records)]


def scores(records, **match) -> dict:
  """test_values of the workdir's own test metric."""
  return test_values(records, task_metric(records), **match)


def layers(records) -> list[int]:
  return sorted({r['layer'] for r in records if r['layer'] is not None})


def routes(records) -> list[tuple[str, str]]:
  """(source, target) of every stitched cell, in the order the run met them."""
  return list(dict.fromkeys((r['source'], r['target']) for r in records if r['layer'] is not None))


# Tables.
def pct(v) -> str:
  return '–' if v is None else f'{100 * v:.1f}'


def table(header: list[str], rows: list[list], title: str | None = None) -> str:
  """A markdown table (cells formatted by the caller), under a '### title' when given."""
  lines = [f'### {title}', ''] if title else []
  lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(map(str, row)) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'


# Saved predictions.
def load_predictions(workdir: pathlib.Path, records) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
  """(test labels, {Cell.id: test predictions}) of every cell with a test accuracy, each checked against
  that accuracy: a labels or predictions file from another run would give plausible but wrong counts.
  Labels are needed only where there are accuracies (a segmentation workdir has none)."""
  scored = [r for r in records if (r['split'], r['metric']) == ('test', 'accuracy')]
  if not scored:
    return None, {}
  labels_path = workdir / 'test_labels.npy'
  if not labels_path.exists():
    raise FileNotFoundError(f'{labels_path} is missing: run the stitch job on this workdir once to save it '
                            '(finished cells are not recomputed)')
  labels = np.load(labels_path)
  out = {}
  for r in scored:
    cell = Cell.of(r)
    path = workdir / 'cells' / cell.id / 'test_predictions.npy'
    if not path.exists():
      raise FileNotFoundError(f'{path} is missing: results.json records a test accuracy for cell {cell.id}, '
                              'but its test predictions were not saved')
    pred = np.load(path)
    if pred.shape != labels.shape or abs(float(np.mean(pred == labels)) - r['value']) > 1e-6:
      raise ValueError(f'{path} (shape {pred.shape}) and {labels_path} (shape {labels.shape}) do not give the '
                       f'test accuracy {r["value"]} that results.json records for cell {cell.id}')
    out[cell.id] = pred
  return labels, out
