"""One optax loop for every objective: AdamW, early stopping, resumable (paper appendix A.2.2).

`fit` trains a pytree of trainable parameters (stitch and/or head) against a
loss `loss_fn(trainable, frozen, batch) -> scalar`. `frozen` (backbone parameters,
cached features) is an argument of the jitted step and is never differentiated:
`jax.value_and_grad` takes `argnums=0`, so no gradient pytree for it is built.

Each epoch ends with a validation pass; the best parameters by the validation
score are kept, and training stops after `patience` epochs without improvement.
The whole state (params, optimizer, best params, early-stopping counters, the
data-order RNG position) is saved by an orbax CheckpointManager after every
epoch, so a killed run resumes at the last finished epoch with the same result.
"""
import dataclasses
import functools
import inspect
import json
import pathlib
import time
import warnings
import zlib
from typing import Any, Callable, Iterator

import flax
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp

from stitchjax import atomic, checkpoints, distributed
from stitchjax.data import batching


@dataclasses.dataclass(frozen=True)
class Schedule:
  lr: float
  epochs: int = 100
  patience: int = 5
  batch_size: int = 128
  weight_decay: float = 1e-4
  seed: int = 0
  # Save after an epoch only once this many seconds have passed since the last save (and always when
  # training stops): an orbax save costs ~0.1 s, which dominates the epochs of small runs like the demo.
  checkpoint_every_s: float = 0.0

  def __post_init__(self):
    for name in ('lr', 'epochs', 'patience', 'batch_size'):
      if not getattr(self, name) > 0:
        raise ValueError(f'train.{name}={getattr(self, name)} must be positive')


@dataclasses.dataclass(frozen=True)
class Placement:
  """Data parallelism: batches sharded over a 'data' mesh axis, parameters replicated."""
  mesh: Any = None

  @classmethod
  def data_parallel(cls) -> 'Placement':
    return cls(jax.make_mesh((jax.device_count(),), ('data',)))

  def batch(self, batch):
    """A global batch (every host holds the same rows) -> arrays sharded over the 'data' axis."""
    if self.mesh is None:
      return batch
    sharding = self._sharding('data')
    if jax.process_count() == 1:
      return jax.device_put(batch, sharding)
    # Multi-host: each process contributes its contiguous slice of the (identically ordered) batch.
    def local(x):
      n, i = x.shape[0] // jax.process_count(), jax.process_index()
      return jax.make_array_from_process_local_data(sharding, x[i * n:(i + 1) * n], x.shape)
    return jax.tree.map(local, batch)

  def replicate(self, tree):
    """Parameters on the devices, placed once: a step then always sees them placed the same way."""
    if self.mesh is None:
      return jax.device_put(tree)
    return jax.device_put(tree, self._sharding())

  # What `batch` and `replicate` would return, as shapes: what a program compiled ahead of its data takes.
  def abstract_batch(self, tree):
    return self._abstract(tree, self._sharding('data'))

  def abstract_replicated(self, tree):
    return self._abstract(tree, self._sharding())

  def _sharding(self, *spec):
    return None if self.mesh is None else jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(*spec))

  @staticmethod
  def _abstract(tree, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


@flax.struct.dataclass
class State:
  """What a fit resumes from. The arrays the step updates stay on the devices, placed once; the
  early-stopping bookkeeping is host numpy, so no epoch can hand the step a differently placed input."""
  params: Any
  opt_state: Any
  best_params: Any
  best_score: np.ndarray  # float32, higher is better (accuracy, or minus a matching loss)
  epoch: np.ndarray  # int32
  bad_epochs: np.ndarray  # int32


def batches(arrays: dict, batch_size: int, *, seed: int | None, epoch: int = 0) -> Iterator[dict]:
  """Minibatches of equally long arrays (memory-mapped features are read batch by batch).

  With a seed the order is a permutation drawn from (seed, epoch), so a resumed
  epoch sees exactly the batches it would have seen. Every batch has exactly
  `batch_size` rows: the last is padded with repeats of its first row and a
  'mask' of zeros there, so one compilation serves every batch and any device
  count that divides the batch size sees the same masked losses.
  """
  n = len(next(iter(arrays.values())))
  for idx in batching.batch_indices(n, batch_size, seed=seed, epoch=epoch):
    idx = np.sort(idx)  # sorted reads are sequential on disk
    mask = np.zeros(batch_size, np.float32)
    mask[:len(idx)] = 1.0
    idx = np.concatenate([idx, np.full(batch_size - len(idx), idx[0])])
    yield {k: np.asarray(v[idx]) for k, v in arrays.items()} | {'mask': mask}


def _adamw(hyper: dict) -> optax.GradientTransformation:
  """AdamW whose learning rate and weight decay are traced scalars: every rate of a sweep runs the same
  compiled step. The optimizer state's structure does not depend on them."""
  return optax.adamw(hyper['lr'], weight_decay=hyper['weight_decay'])


def hyperparameters(lr: float, weight_decay: float) -> dict:
  return {'lr': np.float32(lr), 'weight_decay': np.float32(weight_decay)}


def make_step(loss_fn: Callable):
  """The jitted update `(params, opt_state, frozen, batch, hyper) -> (params, opt_state, loss)`."""
  @jax.jit
  def step(params, opt_state, frozen, batch, hyper):
    loss, grads = jax.value_and_grad(loss_fn)(params, frozen, batch)
    updates, opt_state = _adamw(hyper).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return step


def compile_step(loss_fn: Callable, params, frozen, batch, placement: Placement) -> None:
  """Compiles fit's step without running it, for params and a batch given as arrays or shapes
  (jax.ShapeDtypeStruct) and frozen as fit gets it. jax keeps the executable where the step's first call
  looks, so a thread can compile it while the data it will train on is computed."""
  params = placement.abstract_replicated(params)
  opt_state = placement.abstract_replicated(jax.eval_shape(_adamw(hyperparameters(1.0, 0.0)).init, params))
  _step(loss_fn).lower(params, opt_state, placement.replicate(frozen), placement.abstract_batch(batch),
                       hyperparameters(1.0, 0.0)).compile()


def by_value(fn: Callable) -> tuple:
  """A cache key under which equal models share programs. Bound methods and partials compare their
  instance and arguments by identity, so the `tlt_loss` of two equal models (a tlt cell and the ffm_tlt
  cell after it) would be two keys; (function, arguments) compares frozen dataclasses by value."""
  if inspect.ismethod(fn):
    return fn.__func__, (fn.__self__,)
  if isinstance(fn, functools.partial) and not fn.keywords:
    return fn.func, fn.args
  return fn, ()


def from_key(func: Callable, args: tuple) -> Callable:
  return functools.partial(func, *args) if args else func


def _step(loss_fn: Callable):
  """One jitted step per loss of equal models: every cell, learning rate and stage with the same program
  shares one compilation (jit adds shapes and dtypes to the key)."""
  return _cached_step(*by_value(loss_fn))


@functools.lru_cache(maxsize=8)
def _cached_step(func: Callable, args: tuple):
  # Bounded, like objectives._jit, so that compiled executables do not pile up over a sweep.
  return make_step(from_key(func, args))


def fit(loss_fn: Callable, score_fn: Callable, params, frozen, train: dict, val: dict, schedule: Schedule,
        ckpt_dir: pathlib.Path | None = None, desc: str = 'train', placement: Placement = Placement(),
        log: Callable[[dict], None] = lambda record: None) -> tuple[Any, dict]:
  """Trains `params`; returns (best params by validation score, history).

  score_fn(params, frozen, val) -> float, higher is better, the same on every process.
  log: called after every epoch with its record (stitchjax.metrics.Log writes them).
  """
  state = State(params, _adamw(hyperparameters(1.0, 0.0)).init(params), params, np.float32(-np.inf), np.int32(0),
                np.int32(0))
  manager = _manager(ckpt_dir)
  if manager is not None:
    state = _restore(manager, state)
  state = state.replace(**placement.replicate({'params': state.params, 'opt_state': state.opt_state,
                                                'best_params': state.best_params}))
  frozen, hyper = placement.replicate(frozen), hyperparameters(schedule.lr, schedule.weight_decay)
  step = _step(loss_fn)
  history = {'train_loss': [], 'val_score': []}
  bar = distributed.progress(total=schedule.epochs, initial=int(state.epoch), desc=desc, unit='epoch', leave=False)
  saved_at = time.monotonic()
  examples = len(next(iter(train.values())))
  steps_per_epoch = -(-examples // schedule.batch_size)
  while state.epoch < schedule.epochs and state.bad_epochs < schedule.patience:
    losses, params, opt_state, started = [], state.params, state.opt_state, time.monotonic()
    steps = distributed.progress(batches(train, schedule.batch_size, seed=schedule.seed, epoch=int(state.epoch)),
                                 desc='steps', total=steps_per_epoch, unit='step', leave=False)
    for batch in steps:
      params, opt_state, loss = step(params, opt_state, frozen, placement.batch(batch), hyper)
      losses.append(loss)
    losses = np.stack(distributed.to_host(losses))  # once per epoch: a per-step check would sync every step
    trained_s = time.monotonic() - started
    if not np.isfinite(losses).all():
      bad = int(np.argmin(np.isfinite(losses)))
      raise FloatingPointError(f'{desc}: loss {losses[bad]} at step {bad} of epoch {int(state.epoch)} '
                               f'(lr={schedule.lr}); the last good checkpoint is epoch {int(state.epoch)}')
    train_loss = float(losses.mean())
    score = float(score_fn(params, frozen, val))
    better = score > state.best_score
    state = State(params, opt_state, params if better else state.best_params, np.float32(max(score, state.best_score)),
                  np.int32(state.epoch + 1), np.int32(0 if better else state.bad_epochs + 1))
    history['train_loss'].append(train_loss)
    history['val_score'].append(score)
    log({'unit': desc, 'epoch': int(state.epoch), 'steps': int(state.epoch) * steps_per_epoch, 'train_loss': train_loss,
         'val_score': score, 'lr': schedule.lr, 'seconds': round(time.monotonic() - started, 3),
         'images_per_s': round(examples / trained_s, 1)})
    stopping = state.epoch >= schedule.epochs or state.bad_epochs >= schedule.patience
    # Agreed: every process must take part in the gathers that a save starts.
    if manager is not None and distributed.agree(stopping or time.monotonic() - saved_at >= schedule.checkpoint_every_s):
      with atomic.disk_full_is_clear(f'the checkpoint of {desc} in {ckpt_dir}'):
        _save(manager, int(state.epoch), state)
      saved_at = time.monotonic()
    bar.update()
    bar.set_postfix(loss=f'{train_loss:.4g}', val=f'{score:.4g}')
  bar.close()
  if manager is not None:
    manager.wait_until_finished()
  history.update(epochs=int(state.epoch), best_val_score=float(state.best_score))
  return state.best_params, history


def _manager(ckpt_dir):
  if ckpt_dir is None:
    return None
  directory = pathlib.Path(ckpt_dir).absolute()
  directory.mkdir(parents=True, exist_ok=True)  # orbax creates no directory for a process-local manager
  options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False, create=False,
                                         multiprocessing_options=checkpoints.this_process_only())
  return ocp.CheckpointManager(directory, options=options)


def _save(manager, step: int, state: State) -> None:
  """Process 0 saves the step, then records the size and crc32 of each of its files, which is what
  proves a step corrupt later rather than merely unreadable for a moment (see _restore)."""
  state = distributed.to_host(state)
  if not distributed.is_main():
    return
  manager.save(step, args=ocp.args.StandardSave(state))
  manifests = pathlib.Path(manager.directory) / MANIFESTS
  atomic.write_text(manifests / f'{step}.json', json.dumps(_file_digests(pathlib.Path(manager.directory) / str(step))))
  for old in manifests.glob('*.json'):
    if int(old.stem) not in manager.all_steps():
      old.unlink()


MANIFESTS = '.manifests'  # beside orbax's step directories, which orbax alone manages
RESTORE_ATTEMPTS = 3


def _file_digests(step_dir: pathlib.Path) -> dict:
  return {str(f.relative_to(step_dir)): [f.stat().st_size, zlib.crc32(f.read_bytes())]
          for f in sorted(step_dir.rglob('*')) if f.is_file()}


def _damage(directory, step: int) -> str | None:
  """What proves `step` corrupt: a file missing, resized or changed since it was saved; None if its
  files are as saved, or if no manifest was recorded (a step saved by an older stitchjax)."""
  manifest = pathlib.Path(directory) / MANIFESTS / f'{step}.json'
  if not manifest.exists():
    return None
  expected = json.loads(manifest.read_text())
  found = _file_digests(pathlib.Path(directory) / str(step))
  for name, digest in expected.items():
    if found.get(name) != digest:
      return f'{name} is {"missing" if name not in found else "not as saved"}'
  return None


def _restore(manager, state: State) -> State:
  """The latest readable step. A step proven corrupt (_damage) is skipped with a warning naming it, and
  removed; any other failure is retried, then raised with the step kept: a storage hiccup must
  never destroy a good checkpoint."""
  abstract = checkpoints.numpy_like(state)
  for step in sorted(manager.all_steps(), reverse=True):
    for attempt in range(RESTORE_ATTEMPTS):
      try:
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # orbax raises many types; the manifest tells corruption from the rest
        damage = _damage(manager.directory, step)
        if damage is not None:
          warnings.warn(f'checkpoint step {step} in {manager.directory} is corrupt ({damage}; '
                        f'{type(e).__name__}: {e}); falling back to the previous step')
          if distributed.is_main():
            manager.delete(step)
          break
        if attempt == RESTORE_ATTEMPTS - 1:
          raise OSError(f'checkpoint step {step} in {manager.directory} could not be read in {RESTORE_ATTEMPTS} '
                        f'attempts ({type(e).__name__}: {e}). Its files are as saved, so it is kept; re-run once the '
                        f'storage answers again (or delete {manager.directory}/{step} to train that part again)') from e
        time.sleep(2**attempt)
  return state
