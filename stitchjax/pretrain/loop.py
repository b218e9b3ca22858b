"""The pretraining loop of one model, its curves and its exported processor config.
"""
import dataclasses
import functools
import math
import time

import jax
import numpy as np
from tqdm import tqdm

from stitchjax import data, vit
from stitchjax.pretrain.augment import Augment
from stitchjax.pretrain.dino import Dino, dino_init, dino_schedule, dino_step
from stitchjax.pretrain.evaluate import label_accuracy, probe
from stitchjax.pretrain.siglip import Siglip, siglip_init, siglip_step
from stitchjax.pretrain.training import State, learning_rate, optimizer


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


def images(split: data.Split, size: int) -> np.ndarray:
  """All images of a split, uint8 (N, size, size, 3); the pretraining pipeline does not resize."""
  images = np.stack([split.image(i) for i in range(len(split))]) if len(split) else np.zeros((0, size, size, 3))
  if images.shape[1:] != (size, size, 3):
    raise ValueError(f'pretraining needs {size}x{size} RGB images, got {images.shape[1:]} from {split.kind}')
  return images.astype(np.uint8)


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
    batches = data.batch_indices(len(pool['images']), spec.batch_size, seed=seed, epoch=epoch, drop_remainder=True)
    for idx in batches:
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
