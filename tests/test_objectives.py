"""The objectives lower their losses, never touch a backbone, and FFM beats LFM where it matches."""
import functools

import jax
import numpy as np
import pytest

import helpers as H
from stitchjax import objectives, train


@pytest.mark.parametrize('loss', ['lfm_loss', 'ffm_loss', 'tlt_loss'])
def test_each_objective_lowers_its_loss_and_never_touches_the_backbone(loss):
  model, frozen, init, arrays = H.tiny_problem(loss)
  loss_fn = functools.partial(getattr(objectives, loss), model)
  before = jax.tree.map(np.array, frozen)
  batch = next(train.batches(arrays, 64, seed=None))
  # The gradient has the trainable structure only: no pytree of backbone gradients is ever built.
  grads = jax.eval_shape(jax.grad(loss_fn), init, frozen, batch)
  assert jax.tree.structure(grads) == jax.tree.structure(init)
  score = objectives.loss_score(loss_fn, 32)
  params, history = train.fit(loss_fn, score, init, frozen, arrays, arrays,
                              train.Schedule(lr=1e-2, epochs=15, patience=15, batch_size=32))
  initial, trained = float(loss_fn(init, frozen, batch)), float(loss_fn(params, frozen, batch))
  assert trained < 0.75 * initial
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, frozen))


def test_ffm_reaches_a_lower_final_distance_than_lfm():
  model, frozen, init, arrays = H.tiny_problem('ffm_loss')
  final = {}
  for name in ('lfm_loss', 'ffm_loss'):
    loss_fn = functools.partial(getattr(objectives, name), model)
    params, _ = train.fit(loss_fn, objectives.loss_score(loss_fn, 32), init, frozen, arrays, arrays,
                          train.Schedule(lr=3e-3, epochs=20, patience=20, batch_size=32))
    final[name] = objectives.evaluate(functools.partial(objectives.distances, model), params, frozen, arrays, 32)['final_distance'].mean()
  assert final['ffm_loss'] < final['lfm_loss']
