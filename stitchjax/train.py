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
import pathlib
import time
import warnings
from typing import Any, Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from stitchjax import atomic


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
    sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec('data'))
    if jax.process_count() == 1:
      return jax.device_put(batch, sharding)
    # Multi-host: each process contributes its contiguous slice of the (identically ordered) batch.
    def local(x):
      n, i = x.shape[0] // jax.process_count(), jax.process_index()
      return jax.make_array_from_process_local_data(sharding, x[i * n:(i + 1) * n], x.shape)
    return jax.tree.map(local, batch)

  def replicate(self, tree):
    if self.mesh is None:
      return tree
    return jax.device_put(tree, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec()))


@flax.struct.dataclass
class State:
  params: Any
  opt_state: Any
  best_params: Any
  best_score: jax.Array  # higher is better (accuracy, or minus a matching loss)
  epoch: jax.Array
  bad_epochs: jax.Array


def batches(arrays: dict, batch_size: int, *, seed: int | None, epoch: int = 0) -> Iterator[dict]:
  """Minibatches of equally long arrays (memory-mapped features are read batch by batch).

  With a seed the order is a permutation drawn from (seed, epoch), so a resumed
  epoch sees exactly the batches it would have seen. Every batch has exactly
  `batch_size` rows: the last is padded with repeats of its first row and a
  'mask' of zeros there, so one compilation serves every batch and any device
  count that divides the batch size sees the same masked losses.
  """
  n = len(next(iter(arrays.values())))
  order = np.arange(n) if seed is None else np.random.default_rng([seed, epoch]).permutation(n)
  for start in range(0, n, batch_size):
    idx = np.sort(order[start:start + batch_size])  # sorted reads are sequential on disk
    mask = np.zeros(batch_size, np.float32)
    mask[:len(idx)] = 1.0
    idx = np.concatenate([idx, np.full(batch_size - len(idx), idx[0])])
    yield {k: np.asarray(v[idx]) for k, v in arrays.items()} | {'mask': mask}


def make_step(loss_fn: Callable, optimizer: optax.GradientTransformation):
  @jax.jit
  def step(state: State, frozen, batch):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, frozen, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state), loss
  return step


@functools.lru_cache(maxsize=8)
def _step(loss_fn: Callable, lr: float, weight_decay: float):
  """One jitted AdamW step per (loss, hyperparameters), so that neighbouring fits sharing them compile
  once (a tlt cell and the ffm_tlt cell after it): on CPUs compiling outweighs a small fit. Bounded,
  like objectives._jit, so that compiled executables do not pile up over a long sweep."""
  return make_step(loss_fn, optax.adamw(lr, weight_decay=weight_decay))


def fit(loss_fn: Callable, score_fn: Callable, params, frozen, train: dict, val: dict, schedule: Schedule,
        ckpt_dir: pathlib.Path | None = None, desc: str = 'train', placement: Placement = Placement()
        ) -> tuple[Any, dict]:
  """Trains `params`; returns (best params by validation score, history).

  score_fn(params, frozen, val) -> float, higher is better.
  """
  optimizer = optax.adamw(schedule.lr, weight_decay=schedule.weight_decay)
  state = State(params, optimizer.init(params), params, jnp.array(-jnp.inf), jnp.array(0), jnp.array(0))
  manager = _manager(ckpt_dir)
  if manager is not None:
    state = _restore(manager, state)
  state, frozen = placement.replicate(state), placement.replicate(frozen)
  step = _step(loss_fn, schedule.lr, schedule.weight_decay)
  history = {'train_loss': [], 'val_score': []}
  bar = tqdm(total=schedule.epochs, initial=int(state.epoch), desc=desc, unit='epoch', leave=False)
  saved_at = time.monotonic()
  while int(state.epoch) < schedule.epochs and int(state.bad_epochs) < schedule.patience:
    losses = []
    steps = tqdm(batches(train, schedule.batch_size, seed=schedule.seed, epoch=int(state.epoch)), desc='steps',
                 total=-(-len(next(iter(train.values()))) // schedule.batch_size), unit='step', leave=False)
    for batch in steps:
      state, loss = step(state, frozen, placement.batch(batch))
      losses.append(loss)
    losses = np.asarray(jnp.stack(losses))
    if not np.isfinite(losses).all():  # checked once per epoch: a per-step check would sync every step
      bad = int(np.argmin(np.isfinite(losses)))
      raise FloatingPointError(f'{desc}: loss {losses[bad]} at step {bad} of epoch {int(state.epoch)} '
                               f'(lr={schedule.lr}); the last good checkpoint is epoch {int(state.epoch)}')
    train_loss = float(losses.mean())
    score = float(score_fn(state.params, frozen, val))
    better = score > float(state.best_score)
    state = state.replace(best_params=state.params if better else state.best_params,
                          best_score=jnp.array(max(score, float(state.best_score))), epoch=state.epoch + 1,
                          bad_epochs=jnp.array(0) if better else state.bad_epochs + 1)
    history['train_loss'].append(train_loss)
    history['val_score'].append(score)
    stopping = int(state.epoch) >= schedule.epochs or int(state.bad_epochs) >= schedule.patience
    if manager is not None and (stopping or time.monotonic() - saved_at >= schedule.checkpoint_every_s):
      with atomic.disk_full_is_clear(f'the checkpoint of {desc} in {ckpt_dir}'):
        manager.save(int(state.epoch), args=_save_args(state))
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
  import orbax.checkpoint as ocp
  options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
  return ocp.CheckpointManager(pathlib.Path(ckpt_dir).absolute(), options=options)


def _save_args(state: State):
  import orbax.checkpoint as ocp
  return ocp.args.StandardSave(jax.tree.map(np.asarray, state))


def _restore(manager, state: State) -> State:
  """The latest readable step; a corrupt one is skipped with a warning naming it (and removed)."""
  import orbax.checkpoint as ocp
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.asarray(a).dtype), state)
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises many types for a damaged step; all mean "unusable"
      warnings.warn(f'checkpoint step {step} in {manager.directory} is unreadable ({type(e).__name__}: {e}); '
                    'falling back to the previous step')
      manager.delete(step)
  return state


def save_tree(path: pathlib.Path, tree) -> None:
  """An orbax checkpoint of a pytree; orbax writes to a temporary directory and renames it when complete."""
  import orbax.checkpoint as ocp
  checkpointer = ocp.StandardCheckpointer()
  with atomic.disk_full_is_clear(path):
    # force: a run killed between this save and its done.json mark saves again on resume.
    checkpointer.save(pathlib.Path(path).absolute(), jax.tree.map(np.asarray, tree), force=True)
    checkpointer.wait_until_finished()


def load_tree(path: pathlib.Path, like):
  import orbax.checkpoint as ocp
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.asarray(a).dtype), like)
  return ocp.StandardCheckpointer().restore(pathlib.Path(path).absolute(), abstract)
