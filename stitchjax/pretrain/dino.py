"""DINO: self-distillation with no labels (Caron et al. 2021, "Emerging Properties
in Self-Supervised Vision Transformers", arXiv:2104.14294). A student and an EMA
teacher see two augmented global views of each image; a projection head (MLP ->
L2-normalised bottleneck -> weight-normalised prototypes) maps the pooled CLS
token to K prototype scores. The teacher's scores are centred and sharpened,

    P_t(v) = softmax((g_t(v) - c) / tau_t),    log P_s(v) = log_softmax(g_s(v) / tau_s),
    loss   = 1/2 [H(P_t(v1), P_s(v2)) + H(P_t(v2), P_s(v1))],   H(p, q) = -sum p log q,

the centre c follows the batch mean of the teacher's scores, and the teacher
follows the student by EMA with momentum m -> 1 on a cosine. The head is thrown
away after pretraining.
"""
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from stitchjax import vit
from stitchjax.pretrain.augment import Augment, views
from stitchjax.pretrain.training import State


@dataclasses.dataclass(frozen=True)
class Dino:
  prototypes: int = 256
  hidden: int = 256
  bottleneck: int = 64
  teacher_temp: float = 0.04
  student_temp: float = 0.1
  center_momentum: float = 0.9
  momentum: float = 0.99  # teacher EMA at step 0, rising to 1 on a cosine
  freeze_prototypes_steps: int = 0  # DINO keeps the prototype layer fixed at first, for stability
  centering: str = 'ema'  # 'ema': DINO's running centre; 'sinkhorn': DINOv2's Sinkhorn-Knopp, 3 iterations
  augment: Augment = Augment()  # of the two global views
  local_crops: int = 0  # multi-crop: small views that only the student sees
  local_size: int = 12
  local_scale: tuple[float, float] = (0.1, 0.4)


class DinoHead(nn.Module):
  """DINO's projection head: (B, D) -> prototype scores (B, K) in [-1, 1]."""
  hp: Dino

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.truncated_normal(0.02)
    for _ in range(2):
      x = jax.nn.gelu(nn.Dense(self.hp.hidden, kernel_init=init)(x), approximate=False)
    x = nn.Dense(self.hp.bottleneck, kernel_init=init)(x)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    # Weight normalisation with the gain fixed at 1 (DINO's norm_last_layer): each prototype is a unit vector.
    v = self.param('prototypes', init, (self.hp.bottleneck, self.hp.prototypes))
    return x @ (v / jnp.linalg.norm(v, axis=0, keepdims=True))


def dino_init(cfg: vit.ViTConfig, hp: Dino, key) -> tuple[dict, dict]:
  """(student params, extra state): the teacher starts as a copy of the student, the centre at 0."""
  k_vit, k_head = jax.random.split(key)
  student = {'vit': vit.init_params(cfg, k_vit),
             'head': DinoHead(hp).init(k_head, jnp.zeros((1, cfg.dim)))['params']}
  return student, {'teacher': jax.tree.map(jnp.copy, student), 'center': jnp.zeros((hp.prototypes,))}


def dino_scores(cfg: vit.ViTConfig, hp: Dino, params, images):
  """Normalised images (B, S, S, 3) -> prototype scores (B, K)."""
  return DinoHead(hp).apply({'params': params['head']}, vit.forward(cfg, params['vit'], images)[1])


def at_size(cfg: vit.ViTConfig, params, size: int) -> tuple[vit.ViTConfig, dict]:
  """The backbone run on size x size images: learned patch positions resized bicubically, as DINO does
  for its local crops. Differentiable, so local views train the same position embeddings."""
  small = dataclasses.replace(cfg, image_size=size)
  pos, prefix = params['embed']['pos'], int(cfg.cls_token)
  grid = pos[prefix:].reshape(cfg.grid, cfg.grid, cfg.dim)
  grid = jax.image.resize(grid, (small.grid, small.grid, cfg.dim), 'bicubic')
  pos = jnp.concatenate([pos[:prefix], grid.reshape(-1, cfg.dim)])
  return small, {**params, 'embed': {**params['embed'], 'pos': pos}}


def dino_loss(cfg: vit.ViTConfig, hp: Dino, student, teacher, center, global_views, local_views=None):
  """The cross-view loss of the module docstring; returns (loss, teacher scores (2B, K)).

  global_views: (2, B, S, S, 3), seen by teacher and student; local_views: (L, B, s, s, 3) or None,
  seen by the student only. Each teacher view is the target of every other student view, and the
  loss averages those 2 (L + 1) cross-entropies. The targets pass through stop_gradient: the teacher
  learns only by EMA.
  """
  n = global_views.shape[1]
  both = global_views.reshape(2 * n, *global_views.shape[2:])
  t_scores = jax.lax.stop_gradient(dino_scores(cfg, hp, teacher, both))
  if hp.centering == 'sinkhorn':
    targets = sinkhorn_knopp(t_scores / hp.teacher_temp)
  else:
    targets = jax.nn.softmax((t_scores - center) / hp.teacher_temp, axis=-1)
  log_probs = lambda scores: jax.nn.log_softmax(scores / hp.student_temp, axis=-1)
  student_views = list(log_probs(dino_scores(cfg, hp, student, both)).reshape(2, n, -1))
  if local_views is not None:
    small, small_vit = at_size(cfg, student['vit'], local_views.shape[2])
    scores = dino_scores(small, hp, {**student, 'vit': small_vit}, local_views.reshape(-1, *local_views.shape[2:]))
    student_views += list(log_probs(scores).reshape(local_views.shape[0], n, -1))
  terms = [-jnp.mean(jnp.sum(target * view, axis=-1)) for i, target in enumerate(targets.reshape(2, n, -1))
           for j, view in enumerate(student_views) if j != i]
  return sum(terms) / len(terms), t_scores


def sinkhorn_knopp(logits, iterations: int = 3):
  """Teacher targets (B, K) from logits (B, K) whose prototypes share the batch's mass equally (DINOv2).

  Alternately normalises the prototypes' totals to 1/K and the samples' totals to 1/B, starting
  from exp(logits); rows are then rescaled to sum to 1.
  """
  q = jnp.exp(logits - logits.max())
  q = q / q.sum()
  n, k = q.shape
  for _ in range(iterations):
    q = q / q.sum(0, keepdims=True) / k
    q = q / q.sum(1, keepdims=True) / n
  return q * n


def ema(teacher, student, momentum):
  return jax.tree.map(lambda t, s: momentum * t + (1 - momentum) * s, teacher, student)


def dino_step(cfg: vit.ViTConfig, hp: Dino, tx, norm, state: State, images_u8, key, momentum, train_prototypes):
  """One DINO step on uint8 images (B, S, S, 3); returns (state, metrics).

  momentum: the teacher EMA at this step; train_prototypes: 0.0 while the prototypes are frozen, else 1.0.
  """
  keys = jax.random.split(key, 2 + hp.local_crops)
  global_views = jnp.stack([views(hp.augment, images_u8, k, *norm) for k in keys[:2]])
  local_aug = dataclasses.replace(hp.augment, scale=hp.local_scale)
  local_views = jnp.stack([views(local_aug, images_u8, k, *norm, size=hp.local_size)
                           for k in keys[2:]]) if hp.local_crops else None
  teacher, center = state.extra['teacher'], state.extra['center']
  (loss, t_scores), grads = jax.value_and_grad(dino_loss, argnums=2, has_aux=True)(
      cfg, hp, state.params, teacher, center, global_views, local_views)
  grads = {**grads, 'head': {**grads['head'], 'prototypes': grads['head']['prototypes'] * train_prototypes}}
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  batch_mean = t_scores.mean(0)
  extra = {'teacher': ema(teacher, params, momentum),
           'center': hp.center_momentum * center + (1 - hp.center_momentum) * batch_mean}
  # Collapse shows as a teacher that puts (almost) all its mass on one prototype: entropy -> 0.
  mean_probs = jax.nn.softmax((t_scores - center) / hp.teacher_temp, axis=-1).mean(0)
  entropy = -jnp.sum(mean_probs * jnp.log(mean_probs + 1e-12))
  return State(params, opt_state, extra), {'loss': loss, 'teacher_entropy': entropy}


def dino_schedule(hp: Dino, step: int, total: int) -> dict:
  """Host-side per-step arguments: the teacher momentum (cosine to 1) and the prototype freeze."""
  momentum = 1 - (1 - hp.momentum) * (math.cos(math.pi * step / total) + 1) / 2
  return {'momentum': np.float32(momentum), 'train_prototypes': np.float32(step >= hp.freeze_prototypes_steps)}
