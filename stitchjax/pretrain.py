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
logs loss curves and a k-NN probe on held-out classes, and writes each backbone as a
stitchjax export plus a small JSON log of the recipe and curves.
"""
import dataclasses
import datetime
import functools
import json
import math
import os
import pathlib
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from stitchjax import atomic, backbone, data, preprocess, vit

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


def _interpolation_matrix(start, length, size: int):
  """(size, size) bilinear weights sampling `size` pixels from [start, start + length) of a size-pixel axis.

  Half-pixel centres as torchvision's resize. Taps just outside the box read the image there (as
  RoIAlign does; a crop-then-resize would repeat the box's edge); outside the image they clamp to it.
  """
  coords = start + (jnp.arange(size) + 0.5) * length / size - 0.5
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


def resized_crop(image, y0, x0, h, w, flip):
  """image (S, S, C) -> the box [y0, y0 + h) x [x0, x0 + w) bilinearly resized to (S, S, C), mirrored if flip."""
  size = image.shape[0]
  rows, cols = _interpolation_matrix(y0, h, size), _interpolation_matrix(x0, w, size)
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


def augment_one(aug: Augment, image, key):
  """image: (S, S, C) float in [0, 1] -> an augmented (S, S, C) view."""
  k_crop, k_jitter = jax.random.split(key)
  out = resized_crop(image, *crop_box(aug, k_crop, image.shape[0]))
  return jitter(aug, out, k_jitter) if aug.jitter else out


def to_unit(images_u8):
  """uint8 (B, S, S, 3) -> float32 in [0, 1]."""
  return images_u8.astype(jnp.float32) * jnp.float32(1 / 255)


def normalise(images, mean, std):
  """float [0, 1] (B, S, S, 3) -> model input, as the exported processor config normalises."""
  return (images - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def views(aug: Augment, images_u8, key, mean, std):
  """uint8 (B, S, S, 3) -> one normalised augmented view per image, (B, S, S, 3) float32."""
  keys = jax.random.split(key, images_u8.shape[0])
  return normalise(jax.vmap(functools.partial(augment_one, aug))(to_unit(images_u8), keys), mean, std)


# ---------------------------------------------------------------------------------------------
# The backbone as a trainable function.


def pooled(cfg: vit.ViTConfig, params, images):
  """Normalised images (B, S, S, 3) -> the backbone's pooled output (B, D), as the export runs it."""
  tokens = vit.blocks(cfg, params, vit.embed(cfg, params, images), 0, cfg.depth)
  return vit.pool(cfg, params, vit.final(cfg, params, tokens))


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
  augment: Augment = Augment()


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
  return DinoHead(hp).apply({'params': params['head']}, pooled(cfg, params['vit'], images))


def dino_loss(cfg: vit.ViTConfig, hp: Dino, student, teacher, center, view1, view2):
  """The cross-view loss of the module docstring; returns (loss, teacher scores (2B, K)).

  The teacher's targets pass through stop_gradient: it learns only by EMA.
  """
  both = jnp.concatenate([view1, view2])
  t_scores = jax.lax.stop_gradient(dino_scores(cfg, hp, teacher, both))
  if hp.centering == 'sinkhorn':
    targets = sinkhorn_knopp(t_scores / hp.teacher_temp)
  else:
    targets = jax.nn.softmax((t_scores - center) / hp.teacher_temp, axis=-1)
  log_probs = jax.nn.log_softmax(dino_scores(cfg, hp, student, both) / hp.student_temp, axis=-1)
  n = view1.shape[0]
  swapped = jnp.concatenate([targets[n:], targets[:n]])  # view 1's targets for view 2's predictions and back
  return -jnp.mean(jnp.sum(swapped * log_probs, axis=-1)), t_scores


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
  k1, k2 = jax.random.split(key)
  view1, view2 = (views(hp.augment, images_u8, k, *norm) for k in (k1, k2))
  teacher, center = state.extra['teacher'], state.extra['center']
  (loss, t_scores), grads = jax.value_and_grad(dino_loss, argnums=2, has_aux=True)(
      cfg, hp, state.params, teacher, center, view1, view2)
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
  z_img = _unit(pooled(cfg, params['vit'], images) @ head['proj'])
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
# Evaluation: k-NN on held-out classes.


def features(cfg: vit.ViTConfig, params, images_u8: np.ndarray, norm, batch_size: int = 500) -> np.ndarray:
  """Pooled features (N, D) of un-augmented uint8 images (N, S, S, 3)."""
  embed = jax.jit(lambda p, x: pooled(cfg, p, normalise(to_unit(x), *norm)))
  return np.concatenate([np.asarray(embed(params, images_u8[i:i + batch_size]))
                         for i in range(0, len(images_u8), batch_size)])


def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 20, temperature: float = 0.07) -> float:
  """Weighted k-NN on cosine similarity (as DINO evaluates): each of the k neighbours votes exp(sim / T)."""
  train_x, test_x = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in (train_x, test_x))
  sims = test_x @ train_x.T
  nearest = np.argsort(-sims, axis=1, kind='stable')[:, :k]
  votes = np.zeros((len(test_x), int(train_y.max()) + 1))
  np.add.at(votes, (np.arange(len(test_x))[:, None], train_y[nearest]),
            np.exp(np.take_along_axis(sims, nearest, 1) / temperature))
  return float(np.mean(votes.argmax(1) == test_y))


# ---------------------------------------------------------------------------------------------
# The job.


def _images(split: data.Split, size: int) -> np.ndarray:
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


def train_model(name: str, spec, pool: dict, probe: dict, norm, seed: int, log_every: int) -> tuple[dict, dict]:
  """Pretrains one model; returns (backbone params, log). pool/probe: uint8 'images' and int 'labels'."""
  cfg = vit.ViTConfig(**spec.vit)
  steps_per_epoch = len(pool['images']) // spec.batch_size
  total = spec.epochs * steps_per_epoch
  tx = optimizer(spec, total)
  key = jax.random.key(seed)
  init_key, data_key = jax.random.split(key)
  if spec.objective == 'dino':
    hp = Dino(**{k: v for k, v in spec.dino.items() if k != 'augment'}, augment=Augment(**spec.dino.augment))
    params, extra = dino_init(cfg, hp, init_key)
    step_fn = jax.jit(functools.partial(dino_step, cfg, hp, tx, norm))
    backbone_of = lambda state: state.extra['teacher']['vit']  # DINO evaluates and keeps the teacher
  else:
    hp = Siglip(**{k: v for k, v in spec.siglip.items() if k != 'augment'}, augment=Augment(**spec.siglip.augment))
    params, extra = siglip_init(cfg, hp, int(pool['labels'].max()) + 1, init_key)
    step_fn = jax.jit(functools.partial(siglip_step, cfg, hp, tx, norm))
    backbone_of = lambda state: state.params['vit']
  state = State(params, tx.init(params), extra)

  def knn(state):
    feats = {s: features(cfg, backbone_of(state), probe[s]['images'], norm) for s in ('train', 'test')}
    return knn_accuracy(feats['train'], probe['train']['labels'], feats['test'], probe['test']['labels'])

  curves = {'step': [], 'loss': [], 'lr': []}
  probes = {'epoch': [0], 'step': [0], 'knn_accuracy': [knn(state)]}  # epoch 0: the random initialisation
  lr_at = learning_rate(spec, total)
  start = time.perf_counter()
  bar = tqdm(total=total, desc=name, unit='step')
  window = []
  for epoch in range(spec.epochs):
    for idx in _batches(len(pool['images']), spec.batch_size, seed, epoch):
      step = bar.n
      key = jax.random.fold_in(data_key, step)
      if spec.objective == 'dino':
        state, metrics = step_fn(state, pool['images'][idx], key, **dino_schedule(hp, step, total))
      else:
        state, metrics = step_fn(state, pool['images'][idx], pool['labels'][idx], key)
      window.append(metrics)
      bar.update()
      if bar.n % log_every == 0 or bar.n == total:
        mean = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
        if not math.isfinite(mean['loss']):
          raise FloatingPointError(f'{name}: loss {mean["loss"]} by step {bar.n}')
        window = []
        curves['step'].append(bar.n)
        curves['lr'].append(float(lr_at(step)))
        for k, v in mean.items():
          curves.setdefault(k, []).append(round(v, 5))
        bar.set_postfix(loss=f'{mean["loss"]:.4f}')
    probes['epoch'].append(epoch + 1)
    probes['step'].append(bar.n)
    probes['knn_accuracy'].append(knn(state))
    bar.write(f'{name} epoch {epoch + 1}: loss {curves["loss"][-1]:.4f}, '
              f'k-NN accuracy on held-out classes {probes["knn_accuracy"][-1]:.4f}')
  bar.close()
  seconds = time.perf_counter() - start
  log = {'objective': spec.objective, 'vit': cfg.to_dict(), 'hyperparameters': dataclasses.asdict(hp),
         'optimizer': {k: spec[k] for k in ('batch_size', 'epochs', 'lr', 'warmup_steps', 'weight_decay', 'clip')},
         'steps': total, 'wall_seconds': round(seconds, 1), 'final_loss': curves['loss'][-1],
         'curves': curves, 'probe': probes}
  return jax.tree.map(np.asarray, backbone_of(state)), log


def run(config) -> None:
  """Job 'pretrain': trains every model in config.models, writes the exports and pretrain_log.json."""
  out = pathlib.Path(config.out_dir)
  pool_split = data.load(config.data).splits['train']
  probe_data = data.load(config.probe.data)
  sizes = {spec.vit.image_size for spec in config.models.values()}
  if len(sizes) != 1:
    raise ValueError(f'config.models: every model must share one image_size (one processor config), got {sizes}')
  size = sizes.pop()
  pool = {'images': _images(pool_split, size), 'labels': np.asarray(pool_split.labels)}
  # k-NN memory: the probe's train split; queries: its val split (test splits stay untouched).
  probe = {role: {'images': _images(probe_data.splits[s], size), 'labels': np.asarray(probe_data.splits[s].labels)}
           for role, s in (('train', 'train'), ('test', 'val'))}
  mean, std = pixel_stats(pool['images'])
  proc = processor_config(size, mean, std)
  print(f'pretraining pool: {len(pool["images"])} images of {pool_split.classes}; mean {mean}, std {std}')
  logs = {}
  for name, spec in config.models.items():
    params, logs[name] = train_model(name, spec, pool, probe, (mean, std), config.seed, config.log_every)
    cfg = vit.ViTConfig(**spec.vit)
    prep = preprocess.for_family(backbone._family_for_preprocessing(cfg.family), cfg.image_size, proc)
    backbone.save_backbone(backbone.Backbone(cfg, params, prep, position_resampling='bicubic',
                                             processor_config=proc), out / name, overwrite=True)
    logs[name]['export'] = name
    logs[name]['export_bytes'] = sum(f.stat().st_size for f in (out / name).rglob('*') if f.is_file())
  record = {
      'what': 'stitchjax mini-VFMs: small ViTs pretrained by stitchjax (configs/pretrain_mini.py), not real VFMs',
      'data': {'pretraining': dict(config.data), 'classes': pool_split.classes, 'images': len(pool['images']),
               'pixel_mean': mean, 'pixel_std': std,
               'probe': {**config.probe.to_dict(), 'classes': probe_data.classes,
                         'train_images': len(probe['train']['images']), 'test_images': len(probe['test']['images'])}},
      'processor_config': proc, 'seed': config.seed, 'models': logs,
      'environment': {'jax': jax.__version__, 'device': f'{jax.devices()[0].platform}: {jax.devices()[0].device_kind}',
                      'cpu_count': os.cpu_count(),
                      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')},
  }
  text = json.dumps(record, indent=1, default=_jsonable)
  atomic.write_text(out / 'pretrain_log.json', text)
  atomic.write_text(pathlib.Path(config.workdir) / 'pretrain_log.json', text)
  for name, log in logs.items():
    print(f'{name}: {log["steps"]} steps in {log["wall_seconds"]} s, final loss {log["final_loss"]}, '
          f'k-NN accuracy on held-out classes {log["probe"]["knn_accuracy"][0]:.4f} (random init) -> '
          f'{log["probe"]["knn_accuracy"][-1]:.4f}; export {out / name} ({log["export_bytes"]} bytes)')


def _jsonable(x):
  return x.tolist() if hasattr(x, 'tolist') else list(x) if isinstance(x, tuple) else str(x)
