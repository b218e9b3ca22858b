"""The learning-rate sweep: one unit per rate, the best by validation, finished units never retrained."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stitchjax import metrics, train
from stitchjax.sweep import Sweep
from stitchjax.tasks import masked_mean

X = np.random.default_rng(0).normal(size=(48, 4)).astype(np.float32)
ARRAYS = {'x': X, 'y': X @ np.array([1.0, -2.0, 0.5, 3.0], np.float32)}


def loss_fn(trainable, frozen, batch):
  del frozen
  return masked_mean((batch['x'] @ trainable['w'] - batch['y']) ** 2, batch['mask'])


def score_fn(params, frozen, arrays):
  return -float(jnp.mean((arrays['x'] @ params['w'] - arrays['y']) ** 2))


def sweep(root, lrs, epochs=4):
  return Sweep(tuple(lrs), epochs=epochs, patience=epochs, weight_decay=0.0, seed=0, placement=train.Placement(),
               log=metrics.Log(root))


def run(s, root):
  return s(root / 'unit', 'unit', loss_fn, score_fn, {'w': np.zeros(4, np.float32)}, {}, ARRAYS, ARRAYS, 16)


def test_the_best_rate_by_validation_is_kept_and_finished_units_are_not_retrained(tmp_path, monkeypatch):
  params, lr, val = run(sweep(tmp_path, (1e-4, 1e-1)), tmp_path)
  assert lr == 1e-1 and val == pytest.approx(score_fn(params, {}, ARRAYS))
  for rate in ('0.0001', '0.1'):
    done = json.loads((tmp_path / 'unit' / f'lr_{rate}' / 'done.json').read_text())
    assert done['lr'] == float(rate) and len(done['history']['train_loss']) == 4
  assert json.loads((tmp_path / 'unit' / 'lr_0.0001' / 'done.json').read_text())['val_score'] < val

  monkeypatch.setattr(train, 'fit', lambda *a, **k: pytest.fail('a finished unit was retrained'))
  again, lr_again, val_again = run(sweep(tmp_path, (1e-4, 1e-1)), tmp_path)
  assert (lr_again, val_again) == (lr, val)  # the winner is read back from its unit
  jax.tree.map(np.testing.assert_array_equal, again, jax.tree.map(np.asarray, params))


def test_a_tie_goes_to_the_smaller_rate(tmp_path):
  s = sweep(tmp_path, (3e-2, 1e-2, 2e-2))
  zero = lambda trainable, frozen, batch: 0.0 * jnp.sum(trainable['w'])  # no gradient: every rate scores alike
  _, lr, _ = s(tmp_path / 'tie', 'tie', zero, score_fn, {'w': np.zeros(4, np.float32)}, {}, ARRAYS, ARRAYS, 16)
  assert lr == 1e-2
