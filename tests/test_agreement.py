"""The scout's validation: rank correlations against scipy's, and validate() on workdirs whose answers are known."""
import json

import numpy as np
import pytest
from scipy import stats

from stitchjax import agreement, segmentation
from stitchjax.records import Cell
from stitchjax.scouting import PROXIES

ROUTES = [('a', 'b'), ('b', 'a'), ('a', 'a')]
LAYERS = (1, 2, 3, 4)


def test_rank_correlations_equal_scipys_with_ties():
  rng = np.random.default_rng(0)
  x, y = rng.integers(0, 5, (20, 12)).astype(float), rng.integers(0, 4, (20, 12)).astype(float)
  np.testing.assert_allclose(agreement.spearman(x, y), [stats.spearmanr(a, b)[0] for a, b in zip(x, y)], atol=1e-12)
  np.testing.assert_allclose(agreement.kendall(x, y), [stats.kendalltau(a, b)[0] for a, b in zip(x, y)], atol=1e-12)
  assert np.isnan(agreement.spearman(np.ones((1, 5)), y[:1, :5])[0])


def workdir(tmp_path, accuracy: dict, proxy: dict, n: int = 400, segmentation_task: bool = False):
  """A workdir with results.json, the cells' test predictions (or pixel counts) giving `accuracy`
  {(source, target, layer): value}, and a scout.json whose every proxy is proxy[key] (oriented as each proxy is)."""
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 3, n)
  results, scouted = [], []
  for (s, t, l), acc in accuracy.items():
    cell = Cell(s, t, l, 'ffm_tlt', 'mlp')
    right = np.zeros(n, bool)
    right[rng.permutation(n)[:round(acc * n)]] = True
    (tmp_path / 'cells' / cell.id).mkdir(parents=True)
    if segmentation_task:  # one class per image, all pixels right or all wrong: mIoU follows the right fraction
      counts = {k: np.zeros((n, 3), np.int64) for k in agreement.COUNTS}
      counts['label_area'][np.arange(n), labels] = 10
      counts['intersection'][np.arange(n), labels] = 10 * right
      counts['pred_area'][np.arange(n), np.where(right, labels, (labels + 1) % 3)] = 10
      np.savez(tmp_path / 'cells' / cell.id / 'test_counts.npz', **counts)
      value, metric = segmentation.miou(counts)['miou'], 'miou'
    else:
      np.save(tmp_path / 'cells' / cell.id / 'test_predictions.npy', np.where(right, labels, (labels + 1) % 3))
      value, metric = right.mean(), 'accuracy'
    results.append(cell.record('test', metric, value, n=n))
    scouted += [Cell(s, t, l, 'scout', 'linear').record('val', p, proxy[(s, t, l)] * (1 if up else -1))
                for p, up in PROXIES.items()]
  np.save(tmp_path / 'test_labels.npy', labels)
  (tmp_path / 'results.json').write_text(json.dumps(results))
  (tmp_path / 'scout.json').write_text(json.dumps({'records': scouted, 'rank_by': 'ffm_probe'}))
  return tmp_path


@pytest.mark.parametrize('segmentation_task', [False, True])
def test_a_proxy_that_orders_cells_as_the_protocol_agrees_perfectly(tmp_path, segmentation_task):
  accuracy = {(s, t, l): 0.3 + 0.1 * l + (0.05 if s == 'b' else 0.0) + (0.02 if s == t else 0.0)
              for s, t in ROUTES for l in LAYERS}
  result = agreement.validate(workdir(tmp_path, accuracy, accuracy, segmentation_task=segmentation_task),
                              replicates=200)
  for name in PROXIES:
    r = result['proxies'][name]
    assert r['pooled']['rho'] == pytest.approx(1) and r['pooled']['tau'] == pytest.approx(1), name
    assert r['pooled']['rho_ci'][1] == pytest.approx(1) and r['pooled']['rho_ci'][0] > 0.5
    assert all(t['layer'] == t['best_layer'] == 4 and t['within_se'] for t in r['top1'].values())
    assert r['direction'] == {'a:b': {'agree': 4, 'layers': 4}}
  assert result['proxies'][agreement.DEPTH]['pooled']['rho'] < 0  # deeper is better here: the reference ranks wrongly
  assert agreement.best_proxy(result) in PROXIES
  assert '| ffm_probe | 1.00 [' in agreement.tables(result)


def test_a_reversed_proxy_disagrees_and_its_top1_misses(tmp_path):
  accuracy = {(s, t, l): 0.3 + 0.1 * l + (0.05 if s == 'b' else 0.0) for s, t in ROUTES for l in LAYERS}
  reversed_ = {k: -v for k, v in accuracy.items()}
  result = agreement.validate(workdir(tmp_path, accuracy, reversed_), replicates=200)
  r = result['proxies']['cka']
  assert r['pooled']['rho'] == pytest.approx(-1)
  assert all(t['layer'] == 1 and not t['within_se'] for t in r['top1'].values())
  assert r['direction'] == {'a:b': {'agree': 0, 'layers': 4}}


def test_update_waits_for_enough_cells_and_writes_the_validation(tmp_path):
  accuracy = {('a', 'b', 1): 0.4, ('a', 'b', 2): 0.5}
  work = workdir(tmp_path, accuracy, accuracy)
  assert agreement.update(work) is None and not (work / 'scout_validation.json').exists()
  with pytest.raises(ValueError, match='only 2 cells'):
    agreement.validate(work)
