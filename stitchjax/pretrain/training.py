"""The optimiser and train state the two pretraining objectives share.
"""
from typing import Any

import flax
import jax
import optax


def learning_rate(spec, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to spec.lr, then cosine decay to 1% of it."""
  warmup = min(spec.warmup_steps, total_steps - 1)
  return optax.warmup_cosine_decay_schedule(0.0, spec.lr, warmup, total_steps, end_value=spec.lr * 1e-2)


def optimizer(spec, total_steps: int) -> optax.GradientTransformation:
  """AdamW on learning_rate, weight decay on matrices only (not biases, norms, scalars), clipped gradients."""
  lr = learning_rate(spec, total_steps)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return optax.chain(optax.clip_by_global_norm(spec.clip),
                     optax.adamw(lr, b2=0.99, weight_decay=spec.weight_decay, mask=decay_mask))


@flax.struct.dataclass
class State:
  params: Any  # trained: {'vit': ..., 'head': ...}
  opt_state: Any
  extra: Any  # objective state outside the optimizer: DINO's teacher and centre
