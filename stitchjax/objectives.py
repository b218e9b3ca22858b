"""The stitch-training objectives and their validation scores (paper §3.2-3.3).

Every loss and evaluation function takes `(trainable, frozen, batch)`; those of the stitched model
take the model (stitchjax/model.py) first and are bound with `functools.partial(ffm_loss, model)`:
- trainable: {'stitch': ..., 'head': ...} (whichever the method trains);
- frozen: {'target': target backbone params, 'block': the source block a LoRA stitch adapts};
- batch: cached features ('source' (B,T_s,D_s) at layer n, 'target_layer' (B,T_t,D_t) at layer n,
  'target_final' (B,T_t,D_t), 'features' (B,D) for probes), 'label' (B,), and 'mask' (B,),
  which is 0 for padding rows so every device count sees the same loss.

- lfm:  || align(S(x_src^n)) - x_tgt^n ||^2 at the stitch point;
- ffm:  || T^N(align(S(x_src^n))) - T^N(x_tgt^n) ||^2 on the target's final (normed) tokens;
- tlt:  the task's loss (stitchjax/tasks.py) of its head on the stitched model: cross-entropy of a
        linear head on the pooled output, or per-pixel cross-entropy of a linear decoder on the
        final patch tokens;
- probes of fixed features are the task's own (`task.probe_loss`).
Feature distances average the squared error over tokens and channels; lfm and ffm do not
depend on the task.
"""
import concurrent.futures
import dataclasses
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from stitchjax import distributed, train
from stitchjax import features as features_lib
from stitchjax.model import Stitched
from stitchjax.tasks import masked_mean


def sq_dist(a, b):
  """Per-example mean squared distance of (B, ..., D) features, in float32."""
  d = a.astype(jnp.float32) - b.astype(jnp.float32)
  return jnp.mean(d * d, axis=tuple(range(1, d.ndim)))


# The stitched model's objectives: `functools.partial(lfm_loss, model)` is a `loss(trainable, frozen, batch)`.
def lfm_loss(model: Stitched, trainable, frozen, batch):
  return masked_mean(sq_dist(model.at_stitch(trainable, frozen, batch['source']), batch['target_layer']),
                     batch['mask'])


def ffm_loss(model: Stitched, trainable, frozen, batch):
  return masked_mean(sq_dist(model.final(trainable, frozen, batch['source']), batch['target_final']), batch['mask'])


def tlt_loss(model: Stitched, trainable, frozen, batch):
  return model.task.loss(model.logits(trainable, frozen, batch['source']), batch)


# Per-example quantities for evaluation.
def distances(model: Stitched, trainable, frozen, batch):
  """The paper's Figure 2: distance at the stitch point and at the final layer, per example."""
  return {'layer_distance': sq_dist(model.at_stitch(trainable, frozen, batch['source']), batch['target_layer']),
          'final_distance': sq_dist(model.final(trainable, frozen, batch['source']), batch['target_final'])}


def predictions(model: Stitched, trainable, frozen, batch):
  return model.task.predictions(model.logits(trainable, frozen, batch['source']), batch)


def features(model: Stitched, trainable, frozen, batch):
  return {'features': model.pooled(trainable, frozen, batch['source'])}


# A probe of a trained stitch that recomputes the stitched model per batch (tasks.Segmentation: a split's
# dense tokens are too large to cache): the stitch comes in frozen['stitch'], only the head trains.
def frozen_stitch_loss(model: Stitched, trainable, frozen, batch):
  return tlt_loss(model, trainable | {'stitch': frozen['stitch']}, frozen, batch)


def frozen_stitch_predictions(model: Stitched, trainable, frozen, batch):
  return predictions(model, trainable | {'stitch': frozen['stitch']}, frozen, batch)


def evaluate(fn, trainable, frozen, arrays: dict, batch_size: int, put=lambda b: b) -> dict:
  """Runs a per-example function over arrays in batches -> {name: np.ndarray (N, ...)}."""
  jitted = _jit(fn)
  outs = {}
  for batch in train.batches(arrays, batch_size, seed=None):
    valid = int(batch['mask'].sum())
    for k, v in distributed.to_host(jitted(trainable, frozen, put(batch))).items():
      outs.setdefault(k, []).append(v[:valid])
  return {k: np.concatenate(v) for k, v in outs.items()}


def _jit(fn):
  """One compiled function per evaluation function of equal models (train.by_value)."""
  return _cached_jit(*train.by_value(fn))


@functools.lru_cache(maxsize=32)
def _cached_jit(func, args):
  """Bounded: every compiled executable keeps memory maps alive, and a long sweep of cells would
  otherwise exhaust the process's map count (vm.max_map_count) and crash inside XLA's compiler."""
  return jax.jit(train.from_key(func, args))


def task_score(task, predict_fn, batch_size: int, put=lambda b: b):
  """A validation score for fit(): the task's metric (accuracy, mIoU) of predict_fn over the split."""
  def score(trainable, frozen, arrays):
    return task.score(evaluate(predict_fn, trainable, frozen, arrays, batch_size, put), arrays)
  return score


def loss_score(loss_fn, batch_size: int, put=lambda b: b):
  """A validation score for fit(): minus the mean loss over the split (higher is better)."""
  jitted = _jit(loss_fn)

  def score(trainable, frozen, arrays):
    total = count = 0.0
    for batch in train.batches(arrays, batch_size, seed=None):
      n = float(batch['mask'].sum())
      total += float(distributed.to_host(jitted(trainable, frozen, put(batch)))) * n
      count += n
    return -total / count
  return score


# The public trainer: stitchjax.fit.
LOSSES = {'lfm': lfm_loss, 'ffm': ffm_loss, 'tlt': tlt_loss}
STAGES = {'lfm': ('lfm',), 'ffm': ('ffm',), 'tlt': ('tlt',), 'ffm_tlt': ('ffm', 'tlt')}
INPUTS = {'lfm': ('source', 'target_layer'), 'ffm': ('source', 'target_final'), 'tlt': ('source', 'label')}


def fit(model, params: dict, data: dict, loss: str = 'ffm', *, val: dict | None = None, lr: float = 1e-3,
        epochs: int = 20, patience: int = 5, batch_size: int = 32, weight_decay: float = 1e-4, seed: int = 0,
        workdir=None, log=lambda record: None) -> dict:
  """Trains a StitchedModel's params (stitchjax.stitch) with the protocol's trainer and objectives.

  data, val: {'image': uint8 (N,H,W,3) or a list of (H,W,3), 'label': (N,) or, for segmentation,
    (N, label_size, label_size)}; each backbone preprocesses the images as it would its own. Labels
    are needed by 'tlt' only. val (default: data) picks the best epoch and stops early.
  loss: 'lfm', 'ffm' (train the stitch, label-free), 'tlt' (stitch and head, cross-entropy) or
    'ffm_tlt' (the paper's recipe: ffm, then tlt from its stitch).
  workdir: checkpoints of every epoch, so that a killed fit resumes where it stopped.
  log: called with each epoch's record (unit, epoch, train_loss, val_score, ...).

  The backbones' tokens are computed once, in memory, in bfloat16 as the protocol caches them (ffm_tlt's
  two stages share the source's); for a dataset beyond memory, run the protocol (run.py), whose feature
  cache lives on disk. On accelerators, every stage's programs compile on a thread while the tokens compute.
  Returns params with the trained parts replaced by the best epoch's by validation.
  """
  if loss not in STAGES:
    raise ValueError(f'loss={loss!r} is not one of {tuple(STAGES)}')
  stages = STAGES[loss]
  if 'tlt' in stages and 'head' not in params:
    raise ValueError(f"loss={loss!r} trains a head: build the model with stitchjax.stitch(..., num_classes=...)")
  if batch_size % jax.device_count():
    raise ValueError(f'batch_size={batch_size} is not divisible by the {jax.device_count()} devices')
  placement = train.Placement.data_parallel()
  frozen = placement.replicate(model.frozen(with_source=False))
  units = [_Stage(model.net, stage, batch_size, placement) for stage in stages]
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    compiled = [pool.submit(unit.compile, _trainable(params, unit.name), frozen) if compile_ahead() else None
                for unit in units]
    train_arrays = stitch_inputs(model, data, loss, batch_size)
    val_arrays = train_arrays if val is None else stitch_inputs(model, val, loss, batch_size)
    schedule = train.Schedule(lr=lr, epochs=epochs, patience=patience, batch_size=batch_size,
                              weight_decay=weight_decay, seed=seed)
    for unit, ready in zip(units, compiled):
      if ready is not None:
        ready.result()
      best, _ = train.fit(unit.loss, unit.score, _trainable(params, unit.name), frozen, unit.inputs(train_arrays),
                          unit.inputs(val_arrays), schedule, None if workdir is None else pathlib.Path(workdir) / unit.name,
                          desc=unit.name, placement=placement, log=log)
      params = params | best
  return params


def compile_ahead() -> bool:
  """Whether fit compiles its programs on a thread while the tokens compute: where they run on an accelerator,
  which leaves the host's cores to the compiler. On CPUs both need the same cores, and overlapping them
  gains nothing (BENCHMARKS.md): each program compiles at its first call."""
  return jax.default_backend() != 'cpu'


def _trainable(params: dict, stage: str) -> dict:
  return params if stage == 'tlt' else {'stitch': params['stitch']}


@dataclasses.dataclass(frozen=True)
class _Stage:
  """One stage of stitchjax.fit: its loss, its validation score and the programs they run."""
  net: Stitched
  name: str
  batch_size: int
  placement: train.Placement

  @property
  def loss(self):
    return functools.partial(LOSSES[self.name], self.net)

  @property
  def evaluation(self):
    """The per-batch function the validation score runs."""
    return functools.partial(predictions, self.net) if self.name == 'tlt' else self.loss

  @property
  def score(self):
    if self.name == 'tlt':
      return task_score(self.net.task, self.evaluation, self.batch_size, self.placement.batch)
    return loss_score(self.loss, self.batch_size, self.placement.batch)

  def inputs(self, arrays: dict) -> dict:
    return {k: arrays[k] for k in INPUTS[self.name]}

  def compile(self, trainable, frozen) -> None:
    """The step and the validation program, compiled for this stage's shapes without running them: jax keeps
    them where their first calls look, so this can run while the tokens they read are computed."""
    spec = self.net.spec
    tokens = lambda cfg: jax.ShapeDtypeStruct((self.batch_size, cfg.num_tokens, cfg.dim), features_lib.BF16)
    batch = {'source': tokens(spec.source), 'target_layer': tokens(spec.target), 'target_final': tokens(spec.target),
             'label': jax.ShapeDtypeStruct(self.net.task.label_shape(self.batch_size), self.net.task.label_dtype)}
    batch = self.inputs(batch) | {'mask': jax.ShapeDtypeStruct((self.batch_size,), np.float32)}
    train.compile_step(self.loss, trainable, frozen, batch, self.placement)
    _jit(self.evaluation).lower(self.placement.abstract_replicated(trainable), frozen,
                                self.placement.abstract_batch(batch)).compile()


def stitch_inputs(model, data: dict, loss: str, batch_size: int) -> dict:
  """What `loss` (any of STAGES) reads, as the protocol's feature cache holds it: the source's tokens after
  block n and the target's (after block n for lfm, final for ffm) in bfloat16; the labels for tlt."""
  if 'image' not in data:
    raise ValueError(f"data has no 'image' (keys: {sorted(data)})")
  n = model.spec.layer
  names = {name for stage in STAGES[loss] for name in INPUTS[stage]}
  wanted = {name: where for name, where in {'source': (model.source, f'layer_{n}'),
                                            'target_layer': (model.target, f'layer_{n}'),
                                            'target_final': (model.target, 'final')}.items() if name in names}
  images, out = data['image'], {name: [] for name in wanted}
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    for name, (bb, key) in wanted.items():
      x = features_lib.pad(bb.preprocess(chunk), batch_size)
      tokens = features_lib.forward(bb, bb.params, x, layers=(n,) if key != 'final' else (), final=key == 'final')
      out[name].append(np.asarray(tokens[key])[:len(chunk)].astype(features_lib.BF16))
  arrays = {name: np.concatenate(v) for name, v in out.items()}
  if 'label' in names:
    arrays['label'] = _labels(model, data, len(images))
  return arrays


def _labels(model, data: dict, count: int) -> np.ndarray:
  if 'label' not in data:
    raise ValueError("loss='tlt' needs data['label']")
  labels, want = np.asarray(data['label']), model.task.label_shape(count)
  if labels.shape != want:
    raise ValueError(f"data['label'] has shape {labels.shape}, expected {want} for {model.task.name}")
  return labels.astype(model.task.label_dtype)
