"""Pretraining of the project's own mini-VFMs (stitchjax/assets/mini), the demo's backbones.

Two objectives on one ViT (stitchjax/vit.py), mirroring the heterogeneity the paper
stitches across (DINOv2 vs SigLIP2, paper Sec. 3.1):

* `dino`: self-distillation with no labels (Caron et al. 2021, "Emerging Properties
  in Self-Supervised Vision Transformers", arXiv:2104.14294). A student and an EMA
  teacher see two augmented global views of each image; a projection head (MLP ->
  L2-normalised bottleneck -> weight-normalised prototypes) maps the pooled CLS
  token to K prototype scores. The teacher's scores are centred and sharpened,

      P_t(v) = softmax((g_t(v) - c) / tau_t),    log P_s(v) = log_softmax(g_s(v) / tau_s),
      loss   = 1/2 [H(P_t(v1), P_s(v2)) + H(P_t(v2), P_s(v1))],   H(p, q) = -sum p log q,

  the centre c follows the batch mean of the teacher's scores, and the teacher
  follows the student by EMA with momentum m -> 1 on a cosine. The head is thrown
  away after pretraining.
* `siglip`: the sigmoid loss of SigLIP (Zhai et al. 2023, "Sigmoid Loss for Language
  Image Pre-Training", arXiv:2303.15343) with learned label embeddings in place of a
  text tower: z_i = normalise(W pool(x_i)), z_k = normalise(e_k),

      logit_ik = exp(t') z_i . z_k + b,   y_ik = +1 if image i has label k else -1,
      loss     = -mean_ik log sigmoid(y_ik logit_ik),

  t' initialised to log 10 and b to -10, as in the paper. (SigLIP sums over the
  labels and averages over images; the mean here only rescales by 1/K.)

Inputs are uint8 images; each step augments them on device (`augment`, seeded by the
step) and normalises them exactly as the exported processor config does, so
`load_backbone(export).preprocess` gives what the model was trained on.

`run(config)` (job 'pretrain', configs/pretrain_mini.py) trains every configured model,
logs loss curves and linear-probe and k-NN accuracies on held-out classes, and writes each
backbone as a transformers directory (Dinov2Model, SiglipVisionModel: `convert.hf.save`) that
both `load_backbone` and transformers' `from_pretrained` read, plus a small JSON log of the
recipe and curves.
"""
import dataclasses
import functools
import math
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from stitchjax import data, vit

# The exports' processor config: a square resize to the model's size (the identity at
# that size) and normalisation by the pretraining images' statistics, filled in by `run`.
PROCESSOR = {'image_processor_type': 'SiglipImageProcessor', 'do_resize': True, 'resample': 2,
             'do_rescale': True, 'rescale_factor': 1 / 255, 'do_normalize': True}


def processor_config(image_size: int, mean, std) -> dict:
  return PROCESSOR | {'size': {'height': image_size, 'width': image_size}, 'image_mean': [float(m) for m in mean],
                      'image_std': [float(s) for s in std]}


def pixel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
  """Per-channel mean and std of uint8 images (N, S, S, 3) on the [0, 1] scale, rounded to 4 digits."""
  x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255
  return [round(float(m), 4) for m in x.mean(0)], [round(float(s), 4) for s in x.std(0)]


# ---------------------------------------------------------------------------------------------
# Augmentation, on device.


@dataclasses.dataclass(frozen=True)
class Augment:
  """Random resized crop (area `scale`, aspect ratio in [3/4, 4/3]) back to size, flip, and
  with probability `jitter_prob` brightness and contrast factors drawn from [1 - jitter, 1 + jitter]."""
  scale: tuple[float, float] = (0.4, 1.0)
  flip: bool = True
  jitter: float = 0.0
  jitter_prob: float = 0.8


def _interpolation_matrix(start, length, size: int, out: int):
  """(out, size) bilinear weights sampling `out` pixels from [start, start + length) of a size-pixel axis.

  Half-pixel centres as torchvision's resize. Taps just outside the box read the image there (as
  RoIAlign does; a crop-then-resize would repeat the box's edge); outside the image they clamp to it.
  """
  coords = start + (jnp.arange(out) + 0.5) * length / out - 0.5
  low = jnp.floor(coords)
  frac = (coords - low)[:, None]
  tap = lambda i: jax.nn.one_hot(jnp.clip(i, 0, size - 1).astype(jnp.int32), size)
  return (1 - frac) * tap(low) + frac * tap(low + 1)


def crop_box(aug: Augment, key, size: int):
  """A random crop (y0, x0, h, w) inside a size x size image and whether to flip it: torchvision's
  RandomResizedCrop draw, with the box clipped to the image instead of redrawn when it does not fit."""
  k_area, k_ratio, k_y, k_x, k_flip = jax.random.split(key, 5)
  area = jax.random.uniform(k_area, minval=aug.scale[0], maxval=aug.scale[1]) * size**2
  ratio = jnp.exp(jax.random.uniform(k_ratio, minval=math.log(3 / 4), maxval=math.log(4 / 3)))
  h = jnp.minimum(jnp.sqrt(area / ratio), size)
  w = jnp.minimum(jnp.sqrt(area * ratio), size)
  y0 = jax.random.uniform(k_y) * (size - h)
  x0 = jax.random.uniform(k_x) * (size - w)
  return y0, x0, h, w, aug.flip & jax.random.bernoulli(k_flip)


def resized_crop(image, y0, x0, h, w, flip, out: int | None = None):
  """image (S, S, C) -> the box [y0, y0 + h) x [x0, x0 + w) bilinearly resized to (out, out, C) (default S),
  mirrored if flip."""
  size = image.shape[0]
  out = out or size
  rows, cols = _interpolation_matrix(y0, h, size, out), _interpolation_matrix(x0, w, size, out)
  cols = jnp.where(flip, cols[::-1], cols)
  # The crop is axis-aligned, so resampling separates into a row and a column matrix.
  return jnp.einsum('iy,yxc,jx->ijc', rows, image, cols)


def jitter(aug: Augment, image, key):
  """With probability aug.jitter_prob, brightness then contrast (blend with the image mean), clipped to [0, 1]."""
  k_apply, k_bright, k_contrast = jax.random.split(key, 3)
  factor = lambda k: jax.random.uniform(k, minval=1 - aug.jitter, maxval=1 + aug.jitter)
  out = jnp.clip(image * factor(k_bright), 0, 1)
  mean = out.mean()
  out = jnp.clip((out - mean) * factor(k_contrast) + mean, 0, 1)
  return jnp.where(jax.random.bernoulli(k_apply, aug.jitter_prob), out, image)


def augment_one(aug: Augment, image, key, size: int | None = None):
  """image: (S, S, C) float in [0, 1] -> an augmented (size, size, C) view (default S)."""
  k_crop, k_jitter = jax.random.split(key)
  out = resized_crop(image, *crop_box(aug, k_crop, image.shape[0]), size)
  return jitter(aug, out, k_jitter) if aug.jitter else out


def to_unit(images_u8):
  """uint8 (B, S, S, 3) -> float32 in [0, 1]."""
  return images_u8.astype(jnp.float32) * jnp.float32(1 / 255)


def normalise(images, mean, std):
  """float [0, 1] (B, S, S, 3) -> model input, as the exported processor config normalises."""
  return (images - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def views(aug: Augment, images_u8, key, mean, std, size: int | None = None):
  """uint8 (B, S, S, 3) -> one normalised augmented view per image, (B, size, size, 3) float32 (default S)."""
  keys = jax.random.split(key, images_u8.shape[0])
  one = functools.partial(augment_one, aug, size=size)
  return normalise(jax.vmap(one)(to_unit(images_u8), keys), mean, std)


# ---------------------------------------------------------------------------------------------
# The backbone as a trainable function.


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


# ---------------------------------------------------------------------------------------------
# DINO.


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


# ---------------------------------------------------------------------------------------------
# SigLIP.


@dataclasses.dataclass(frozen=True)
class Siglip:
  embed_dim: int = 64
  temperature_init: float = math.log(10)  # t' (the logit scale is exp(t'))
  bias_init: float = -10.0
  augment: Augment = Augment(scale=(0.7, 1.0))


def siglip_init(cfg: vit.ViTConfig, hp: Siglip, num_labels: int, key) -> tuple[dict, dict]:
  k_vit, k_proj, k_labels = jax.random.split(key, 3)
  params = {'vit': vit.init_params(cfg, k_vit),
            'head': {'proj': nn.initializers.lecun_normal()(k_proj, (cfg.dim, hp.embed_dim)),
                     'labels': jax.random.normal(k_labels, (num_labels, hp.embed_dim)),
                     'temperature': jnp.asarray(hp.temperature_init, jnp.float32),
                     'bias': jnp.asarray(hp.bias_init, jnp.float32)}}
  return params, {}


def _unit(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def siglip_logits(cfg: vit.ViTConfig, params, images):
  """Normalised images (B, S, S, 3) -> image-label logits (B, K)."""
  head = params['head']
  z_img = _unit(vit.forward(cfg, params['vit'], images)[1] @ head['proj'])
  return jnp.exp(head['temperature']) * z_img @ _unit(head['labels']).T + head['bias']


def sigmoid_loss(logits, labels):
  """-mean log sigmoid(y * logits) with y = +1 at (i, labels[i]) and -1 elsewhere; logits (B, K), labels (B,)."""
  signs = 2 * jax.nn.one_hot(labels, logits.shape[-1]) - 1
  return -jnp.mean(jax.nn.log_sigmoid(signs * logits))


def siglip_step(cfg: vit.ViTConfig, hp: Siglip, tx, norm, state: State, images_u8, labels, key):
  """One SigLIP step on uint8 images (B, S, S, 3) and labels (B,); returns (state, metrics)."""
  def loss_fn(params):
    logits = siglip_logits(cfg, params, views(hp.augment, images_u8, key, *norm))
    return sigmoid_loss(logits, labels), logits
  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == labels),
             'temperature': jnp.exp(params['head']['temperature']), 'bias': params['head']['bias']}
  return State(params, opt_state, state.extra), metrics


# ---------------------------------------------------------------------------------------------
# Evaluation on classes the models never see: a linear probe and k-NN on pooled features.


def features(cfg: vit.ViTConfig, params, images_u8: np.ndarray, norm, batch_size: int = 500) -> np.ndarray:
  """Pooled features (N, D) of un-augmented uint8 images (N, S, S, 3)."""
  return np.concatenate([np.asarray(_pooled_images(cfg, params, images_u8[i:i + batch_size], norm))
                         for i in range(0, len(images_u8), batch_size)])


@functools.partial(jax.jit, static_argnums=0)
def _pooled_images(cfg: vit.ViTConfig, params, images_u8, norm):
  return vit.forward(cfg, params, normalise(to_unit(images_u8), *norm))[1]


def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 20, temperature: float = 0.07) -> float:
  """Weighted k-NN on cosine similarity (as DINO evaluates): each of the k neighbours votes exp(sim / T)."""
  train_x, test_x = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in (train_x, test_x))
  sims = test_x @ train_x.T
  nearest = np.argsort(-sims, axis=1, kind='stable')[:, :k]
  votes = np.zeros((len(test_x), int(train_y.max()) + 1))
  np.add.at(votes, (np.arange(len(test_x))[:, None], train_y[nearest]),
            np.exp(np.take_along_axis(sims, nearest, 1) / temperature))
  return float(np.mean(votes.argmax(1) == test_y))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _fit_linear(x, y, num_classes: int, steps: int):
  """Softmax regression (D, K) weights and (K,) bias: full batch, zero init, Adam 0.01, L2 1e-4 on weights."""
  def loss(params):
    logits = x @ params['w'] + params['b']
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + 1e-4 * jnp.sum(params['w']**2)
  tx = optax.adam(0.01)
  params = {'w': jnp.zeros((x.shape[1], num_classes)), 'b': jnp.zeros((num_classes,))}

  def step(_, carry):
    params, opt_state = carry
    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state)
    return optax.apply_updates(params, updates), opt_state
  return jax.lax.fori_loop(0, steps, step, (params, tx.init(params)))[0]


def linear_probe_accuracy(train_x, train_y, test_x, test_y, steps: int = 1000) -> float:
  """Test accuracy of softmax regression on features standardised by the train statistics.

  Deterministic and, at these sizes (~1000 examples, D <= 100), trained to convergence, so
  features are compared rather than optimisers. Standardising matters: pretrained features
  can concentrate in a few large directions that cosine k-NN over-weights.
  """
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  params = _fit_linear(jnp.asarray((train_x - mean) / std), jnp.asarray(train_y), int(train_y.max()) + 1, steps)
  logits = ((test_x - mean) / std) @ np.asarray(params['w']) + np.asarray(params['b'])
  return float(np.mean(logits.argmax(1) == test_y))


def probe(cfg: vit.ViTConfig, params, held_out: dict, norm) -> dict:
  """held_out: {'train', 'test'} -> uint8 'images', int 'labels' -> linear-probe and k-NN test accuracies."""
  x = {s: features(cfg, params, held_out[s]['images'], norm) for s in ('train', 'test')}
  y = {s: held_out[s]['labels'] for s in ('train', 'test')}
  return {'linear_probe_accuracy': round(linear_probe_accuracy(x['train'], y['train'], x['test'], y['test']), 4),
          'knn_accuracy': round(knn_accuracy(x['train'], y['train'], x['test'], y['test']), 4)}


def label_accuracy(cfg: vit.ViTConfig, params, images_u8: np.ndarray, labels: np.ndarray, norm) -> float:
  """SigLIP: how often an image's nearest label embedding is its own label (images it was not trained on)."""
  logits = np.concatenate([np.asarray(_siglip_logits_images(cfg, params, images_u8[i:i + 500], norm))
                           for i in range(0, len(images_u8), 500)])
  return round(float(np.mean(logits.argmax(1) == labels)), 4)


@functools.partial(jax.jit, static_argnums=0)
def _siglip_logits_images(cfg: vit.ViTConfig, params, images_u8, norm):
  return siglip_logits(cfg, params, normalise(to_unit(images_u8), *norm))


# ---------------------------------------------------------------------------------------------
# The job.


def images(split: data.Split, size: int) -> np.ndarray:
  """All images of a split, uint8 (N, size, size, 3); the pretraining pipeline does not resize."""
  images = np.stack([split.image(i) for i in range(len(split))]) if len(split) else np.zeros((0, size, size, 3))
  if images.shape[1:] != (size, size, 3):
    raise ValueError(f'pretraining needs {size}x{size} RGB images, got {images.shape[1:]} from {split.kind}')
  return images.astype(np.uint8)


def _batches(n: int, batch_size: int, seed: int, epoch: int):
  """Index arrays of full batches of a fresh permutation per (seed, epoch); the remainder is dropped."""
  order = np.random.default_rng([seed, epoch]).permutation(n)
  for start in range(0, n - batch_size + 1, batch_size):
    yield order[start:start + batch_size]


def _objective(spec, cfg: vit.ViTConfig, num_labels: int, tx, norm, key):
  """(hyperparameters, initial state, jitted step, the step's host-side arguments, the backbone to export)."""
  if spec.objective == 'dino':
    fields = {k: tuple(v) if k == 'local_scale' else v for k, v in spec.dino.items() if k != 'augment'}
    hp = Dino(**fields, augment=Augment(**spec.dino.augment))
    params, extra = dino_init(cfg, hp, key)
    step = jax.jit(functools.partial(dino_step, cfg, hp, tx, norm))
    args = lambda images, labels, k, i, total: (images, k, *dino_schedule(hp, i, total).values())
    return hp, State(params, tx.init(params), extra), step, args, lambda state: state.extra['teacher']['vit']
  if spec.objective == 'siglip':
    hp = Siglip(**{k: v for k, v in spec.siglip.items() if k != 'augment'}, augment=Augment(**spec.siglip.augment))
    params, extra = siglip_init(cfg, hp, num_labels, key)
    step = jax.jit(functools.partial(siglip_step, cfg, hp, tx, norm))
    args = lambda images, labels, k, i, total: (images, labels, k)
    return hp, State(params, tx.init(params), extra), step, args, lambda state: state.params['vit']
  raise ValueError(f'objective={spec.objective!r} is not one of dino, siglip')


def train_model(name: str, spec, pool: dict, val: dict, held_out: dict, norm, seed: int,
                log_every: int) -> tuple[dict, dict]:
  """Pretrains one model; returns (backbone params, log).

  pool, val: uint8 'images' and int 'labels' of the pretraining classes (val is only evaluated);
  held_out: {'train', 'test'} of the same for the probe's classes. DINO exports its teacher.
  """
  cfg = vit.ViTConfig(**spec.vit)
  total = spec.epochs * (len(pool['images']) // spec.batch_size)
  tx = optimizer(spec, total)
  init_key, data_key = jax.random.split(jax.random.key(seed))
  hp, state, step_fn, step_args, backbone_of = _objective(spec, cfg, int(pool['labels'].max()) + 1, tx, norm,
                                                          init_key)

  def evaluate(state, epoch: int) -> dict:
    scores = {'epoch': epoch, 'step': epoch * (total // spec.epochs), **probe(cfg, backbone_of(state), held_out, norm)}
    if spec.objective == 'siglip':
      scores['label_accuracy'] = label_accuracy(cfg, state.params, val['images'], val['labels'], norm)
    return scores

  probes = [evaluate(state, 0)]  # epoch 0: the random initialisation
  curves = {'step': [], 'lr': []}
  lr_at = learning_rate(spec, total)
  start = time.perf_counter()
  bar = tqdm(total=total, desc=name, unit='step')
  window = []
  for epoch in range(spec.epochs):
    for idx in _batches(len(pool['images']), spec.batch_size, seed, epoch):
      i = bar.n
      state, metrics = step_fn(state, *step_args(pool['images'][idx], pool['labels'][idx],
                                                 jax.random.fold_in(data_key, i), i, total))
      window.append(metrics)
      bar.update()
      if bar.n % log_every == 0 or bar.n == total:
        _log_window(name, curves, window, bar.n, float(lr_at(i)))
        window = []
        bar.set_postfix(loss=f'{curves["loss"][-1]:.4f}')
    probes.append(evaluate(state, epoch + 1))
    bar.write(f'{name} epoch {epoch + 1}: loss {curves["loss"][-1]:.4f}, held-out classes: ' +
              ', '.join(f'{k} {v}' for k, v in probes[-1].items() if k not in ('epoch', 'step')))
  bar.close()
  log = {'objective': spec.objective, 'vit': cfg.to_dict(), 'hyperparameters': dataclasses.asdict(hp),
         'optimizer': {k: spec[k] for k in ('batch_size', 'epochs', 'lr', 'warmup_steps', 'weight_decay', 'clip')},
         'steps': total, 'wall_seconds': round(time.perf_counter() - start, 1), 'final_loss': curves['loss'][-1],
         'curves': curves, 'probe': {k: [p[k] for p in probes] for k in probes[0]}}
  return jax.tree.map(np.asarray, backbone_of(state)), log


def _log_window(name: str, curves: dict, window: list, step: int, lr: float) -> None:
  """Appends the mean of the window's metrics at `step` to the curves; a non-finite loss stops the run."""
  mean = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
  if not math.isfinite(mean['loss']):
    raise FloatingPointError(f'{name}: loss {mean["loss"]} by step {step}')
  curves['step'].append(step)
  curves['lr'].append(lr)
  for k, v in mean.items():
    curves.setdefault(k, []).append(round(v, 5))
