"""Figures 2-6 and the Table 12 prediction analysis, on synthetic workdirs with hand-built predictions."""
import json
import pathlib

import numpy as np
import pytest
from matplotlib.image import imread

from stitchjax import analysis, config_lib, jobs, protocol
from stitchjax import records as records_lib
from stitchjax.records import Cell

K = 5  # classes

# One row per group of test images: (count, source self-stitch, target self-stitch, stitched) predictions,
# with the true class 0. Counted by hand below.
GROUPS = [
    (5, 0, 2, 0),  # RWR: preserve; follows source; labels differ and stitched = source's
    (4, 1, 0, 0),  # WRR: preserve; follows target; stitched = target's
    (3, 1, 2, 0),  # WWR: rescue; labels differ, stitched neither
    (2, 0, 0, 3),  # RRW: interference; labels agree
    (4, 0, 2, 2),  # RWW: interference; follows target; stitched = target's
    (2, 0, 2, 3),  # RWW: interference; follows target; stitched neither
    (1, 1, 0, 1),  # WRW: interference; follows source; stitched = source's
    (7, 0, 0, 0),  # RRR: trivial
    (8, 1, 1, 1),  # WWW: trivial; labels agree
]
EXPECTED = {'RWR': 5, 'WRR': 4, 'WWR': 3, 'RRW': 2, 'RWW': 6, 'WRW': 1, 'RRR': 7, 'WWW': 8,
            'preserve': 9, 'rescue': 3, 'interference': 9, 'follows_source': 6, 'follows_target': 10,
            'label_follows_source': 6, 'label_follows_target': 8, 'label_follows_neither': 5}
N = 36


def _hand_built(seed=0):
  """(labels, source self, target self, stitched), with each image's classes shifted by a random offset so
  the true class is not always 0 (equality between predictions, and so every count, is unchanged)."""
  cols = np.array([row for count, *row in GROUPS for _ in range(count)])
  offset = np.random.default_rng(seed).integers(0, K, len(cols))
  return (offset % K,) + tuple((cols[:, i] + offset) % K for i in range(3))


def test_prediction_analysis_counts_by_hand():
  assert analysis.prediction_analysis(*_hand_built()) == EXPECTED


def test_prediction_analysis_rejects_mismatched_lengths():
  labels, s, t, st = _hand_built()
  with pytest.raises(ValueError, match='stitched'):
    analysis.prediction_analysis(labels, s, t, st[:-1])


def _workdir(root: pathlib.Path, pairs=(('a', 'b'), ('b', 'a')), layers=(2, 4)) -> pathlib.Path:
  """A finished workdir as protocol.run leaves it: results.json, per-cell predictions and test labels.
  a→b at L2 (ffm_tlt, mlp), with its self-stitches, holds the hand-built predictions; the rest are noise."""
  rng = np.random.default_rng(1)
  labels, *hand = _hand_built()
  hand = dict(zip([('a', 'a'), ('b', 'b'), ('a', 'b')], hand))
  backbones = list(dict.fromkeys(b for p in pairs for b in p))
  records = []

  def add(cell: Cell, pred):
    path = root / 'cells' / cell.id / 'test_predictions.npy'
    path.parent.mkdir(parents=True)
    np.save(path, pred.astype(np.int32))
    records.append(cell.record('test', 'accuracy', np.mean(pred == labels), n=N))

  def noisy(p_right):
    return np.where(rng.random(N) < p_right, labels, (labels + 1) % K)

  for b in backbones:
    add(Cell(b, b, None, 'lp', None), noisy(0.5))
  for s, t in [(b, b) for b in backbones] + list(pairs):
    for layer in layers:
      for method in ('lfm', 'ffm', 'ffm_tlt'):
        cell = Cell(s, t, layer, method, 'mlp')
        add(cell, hand[(s, t)] if (layer, method) == (2, 'ffm_tlt') and (s, t) in hand else noisy(0.7))
        if method in ('lfm', 'ffm'):
          records += [cell.record('test', 'layer_distance', 1e-3 * layer), cell.record('test', 'final_distance', 0.5 / layer)]
  (root / 'results.json').write_text(json.dumps(records))
  np.save(root / 'test_labels.npy', labels.astype(np.int32))
  return root


def _table12_row(md: str, pair: str, method: str, layer: str) -> list[str]:
  rows = [[c.strip() for c in line.strip('|').split('|')] for line in md.splitlines()
          if line.startswith(f'| {pair} | {method} | {layer} |')]
  assert len(rows) == 1, rows
  return rows[0]


def test_write_counts_table12_from_the_workdir(tmp_path):
  work = _workdir(tmp_path)
  analysis.write(work)
  md = (work / 'analyses.md').read_text()
  row = _table12_row(md, 'a→b', 'ffm_tlt', 'L2')
  keys = list(analysis.PRESERVE + analysis.RESCUE + analysis.INTERFERENCE + analysis.TRIVIAL) + [
      'preserve', 'rescue', 'interference', 'follows_source', 'follows_target',
      'label_follows_source', 'label_follows_target', 'label_follows_neither']
  assert dict(zip(keys, map(int, row[3:3 + len(keys)]))) == EXPECTED
  # Accuracies: the source self-stitch is right in RWR, RRW, RWW, RRR; the target's in WRR, RRW, WRW, RRR.
  assert row[-3:] == [f'{100 * 20 / N:.1f}', f'{100 * 14 / N:.1f}', f'{100 * 19 / N:.1f}']
  # Every cross pair, method and layer with both baselines gets a row: 2 pairs x 3 methods x 2 layers.
  assert sum(line.startswith(('| a→b |', '| b→a |')) for line in md.split('### Table 12')[1].splitlines()) == 12


def test_write_draws_every_figure(tmp_path):
  work = _workdir(tmp_path)
  analysis.write(work)
  md = (work / 'analyses.md').read_text()
  for n in range(2, 7):
    png = work / f'figure{n}_mlp.png'
    assert f'![Figure {n}](figure{n}_mlp.png)' in md
    image = imread(png)
    assert png.stat().st_size > 10_000 and image.std() > 0.05  # not blank
  assert 'Figure 2: feature distances' in md and 'Table 4' in md and 'Table 2' in md  # the numbers too


def test_figures_plot_the_records(tmp_path):
  records = json.loads((_workdir(tmp_path) / 'results.json').read_text())
  acc = records_lib.test_values(records, method='ffm_tlt', stitch_layer='mlp')
  ax = analysis.figure5(records, 'mlp').axes[0]  # a→b
  lines = {line.get_label(): line for line in ax.get_lines()}
  assert set(lines) >= {'a→b', 'a→a (self)', 'b→b (self)', 'a linear probe', 'b linear probe'}
  for label, route in (('a→b', ('a', 'b')), ('b→b (self)', ('b', 'b'))):
    assert list(lines[label].get_xdata()) == [2, 4]
    np.testing.assert_allclose(lines[label].get_ydata(), [100 * acc[(*route, l)] for l in (2, 4)])
  ax2 = analysis.figure2(records, 'mlp').axes[0]
  assert ax2.get_yscale() == 'log'
  ffm_final = {line.get_label(): line for line in ax2.get_lines()}['FFM at final layer']
  np.testing.assert_allclose(ffm_final.get_ydata(), [0.25, 0.125])


def test_figure6_is_the_source_by_target_grid(tmp_path):
  records = json.loads((_workdir(tmp_path, pairs=(('a', 'b'), ('c', 'a'))) / 'results.json').read_text())
  axes = analysis.figure6(records, 'mlp').axes
  assert len(axes) == 9  # backbones a, b, c: rows are sources, columns targets
  titles = [ax.get_title() for ax in axes]
  assert titles[1] == 'a→b (mlp)' and titles[6] == 'c→a (mlp)' and titles[0] == 'a→a (mlp)'
  not_run = [i for i, ax in enumerate(axes) if any(t.get_text() == 'not run' for t in ax.texts)]
  assert not_run == [2, 3, 5, 7]  # a→c, b→a, b→c, c→b
  assert len(axes[0].get_yticks()) > 1 and list(axes[1].get_xticks()) == [2, 4]  # shared y, integer layers


def test_missing_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'results.json')):
    analysis.write(tmp_path)
  work = _workdir(tmp_path / 'w')
  missing = work / 'cells' / Cell('b', 'b', 4, 'ffm', 'mlp').id / 'test_predictions.npy'
  missing.unlink()
  with pytest.raises(FileNotFoundError, match=str(missing)):
    analysis.write(work)


def test_missing_labels_are_named(tmp_path):
  work = _workdir(tmp_path)
  (work / 'test_labels.npy').unlink()
  with pytest.raises(FileNotFoundError, match=str(work / 'test_labels.npy')):
    analysis.write(work)


def test_a_workdir_without_accuracies_needs_no_labels(tmp_path):
  """Segmentation records mIoU and saves no class predictions: only Figure 2's distances apply."""
  records = [r | {'metric': 'miou'} if r['metric'] == 'accuracy' else r
             for r in json.loads((_workdir(tmp_path) / 'results.json').read_text())]
  (tmp_path / 'results.json').write_text(json.dumps(records))
  (tmp_path / 'test_labels.npy').unlink()
  analysis.write(tmp_path)
  assert (tmp_path / 'figure2_mlp.png').exists() and not (tmp_path / 'figure5_mlp.png').exists()


def test_labels_from_another_run_are_refused(tmp_path):
  work = _workdir(tmp_path)
  labels = np.load(work / 'test_labels.npy')
  np.save(work / 'test_labels.npy', (labels + 1) % K)
  with pytest.raises(ValueError, match='test_labels.npy'):
    analysis.write(work)


def _config(work: pathlib.Path, analysis_only: bool):
  """A config whose data and backbones do not exist: only the workdir is there to use."""
  c = config_lib.stitching(str(work), dict(kind='image_folder', root=str(work / 'no-data')),
                           backbones={'a': {'path': str(work / 'no-a')}, 'b': {'path': str(work / 'no-b')}})
  c.pairs, c.layers, c.analysis_only = 'a:b,b:a', '2,4', analysis_only
  return c


def test_analysis_only_trains_nothing(tmp_path, monkeypatch):
  work = _workdir(tmp_path)
  monkeypatch.setattr(protocol, 'run', lambda *a, **k: pytest.fail('analysis_only ran the protocol'))
  monkeypatch.setattr(protocol, 'Runner', lambda *a, **k: pytest.fail('analysis_only built a Runner'))
  jobs.run(_config(work, analysis_only=True))
  assert (work / 'analyses.md').exists() and (work / 'figure6_mlp.png').exists()


def test_a_stitch_run_writes_the_analyses_at_the_end(tmp_path, monkeypatch):
  work = tmp_path / 'work'
  work.mkdir()
  # The protocol itself is tested in test_protocol.py; here it leaves a finished workdir behind.
  monkeypatch.setattr(protocol, 'run', lambda config: json.loads((_workdir(work) / 'results.json').read_text()))
  jobs.run(_config(work, analysis_only=False))
  assert (work / 'tables.md').exists() and (work / 'analyses.md').exists()
