"""Pytrees on disk as orbax checkpoints: trained stitches and heads, exported models and backbones.

Trained parameters are replicated and small, so process 0 writes them and no process waits in
orbax's cross-process barriers (stitchjax/distributed.py); every process reads them from the
shared workdir. train.py's per-epoch CheckpointManager uses the same options.
"""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from convert import common
from convert.common import CheckpointError
from stitchjax import atomic, distributed


def this_process_only():
  """orbax options for a checkpoint that this process alone reads or writes."""
  me = jax.process_index()
  return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})


def numpy_like(tree):
  """What orbax restores into: numpy arrays of `tree`'s shapes and dtypes, so that a restore lands on the host."""
  return jax.tree.map(lambda a: np.zeros(np.shape(a), jnp.asarray(a).dtype), tree)


def save_tree(path: pathlib.Path, tree) -> None:
  """A pytree written by process 0; orbax writes to a temporary directory and renames it when complete."""
  tree = distributed.to_host(tree)
  if not distributed.is_main():
    return
  checkpointer = ocp.StandardCheckpointer(multiprocessing_options=this_process_only())
  with atomic.disk_full_is_clear(path):
    # force: a run killed between this save and its done.json mark saves again on resume.
    checkpointer.save(pathlib.Path(path).absolute(), tree, force=True)
    checkpointer.wait_until_finished()


def load_tree(path: pathlib.Path, like=None):
  """numpy arrays as saved, on every process; CheckpointError names what cannot be read. With `like`
  (arrays or jax.ShapeDtypeStructs), every key and shape is checked against it first, and the arrays
  are cast to its dtypes: orbax alone would hand back whatever shapes were saved."""
  path = pathlib.Path(path).absolute()
  checkpointer = ocp.StandardCheckpointer(multiprocessing_options=this_process_only())
  try:
    tree = jax.tree.map(np.asarray, checkpointer.restore(path))
  except Exception as e:  # orbax raises many kinds; the caller needs the path and the cause
    raise CheckpointError(f'{path}: cannot restore the orbax checkpoint ({e})') from e
  if like is None:
    return tree
  _check_keys_and_shapes(path, tree, like)
  return jax.tree.map(lambda a, want: a.astype(want.dtype), tree, like)


def _check_keys_and_shapes(path, got, want) -> None:
  """CheckpointError naming the first key of `path` missing from `got`, unexpected in it, or misshapen."""
  got, want = common.flat_paths(got), common.flat_paths(want)
  for key in sorted(set(want) | set(got)):
    if key not in got:
      raise CheckpointError(f'{path}: missing key {key!r}')
    if key not in want:
      raise CheckpointError(f'{path}: unexpected key {key!r}')
    if tuple(np.shape(got[key])) != tuple(np.shape(want[key])):
      raise CheckpointError(f'{path}: key {key!r} has shape {tuple(np.shape(got[key]))}, '
                            f'expected {tuple(np.shape(want[key]))}')
