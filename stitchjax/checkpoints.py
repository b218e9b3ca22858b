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
  """numpy arrays shaped like `like` (None: as saved, for the caller to check), on every process."""
  checkpointer = ocp.StandardCheckpointer(multiprocessing_options=this_process_only())
  return checkpointer.restore(pathlib.Path(path).absolute(), None if like is None else numpy_like(like))
