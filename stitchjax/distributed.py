"""Several JAX processes as one run (JAX's multi-controller runtime: one process per host or GPU node).

Every process runs the same program over the same data order, and JAX's collectives keep
them in step. Three rules make that safe:

- **Process 0 writes.** Results, tables, plots, reports, exports, checkpoints and the
  workdir lock belong to process 0 (`is_main`); the others compute alongside it. The
  workdir must be on storage every process sees (NFS, GCS FUSE), as orbax requires of
  multi-host checkpoints; the feature cache may be on each host's local disk.
- **Decisions that start collectives are agreed** (`agree`): is a unit done, is a
  checkpoint due. Process 0's view is taken by all, so no process waits in a
  collective the others skipped.
- **Values leave the devices through `to_host`**, which gathers what is spread over
  processes (a per-process `np.asarray` fails on arrays other processes hold).

With one process every function here is the identity or free.
"""
import pathlib
import secrets
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm


def initialize(config) -> None:
  """jax.distributed.initialize from `config.distributed` and its optional fields.

  Leave coordinator_address, num_processes and process_id unset under SLURM (`srun`) and on
  TPU VMs, where JAX reads them from the environment; set all three elsewhere (e.g.
  127.0.0.1:1234, 2, 0 and 1 for two processes on one machine).
  """
  if jax.distributed.is_initialized():
    return
  explicit = {'coordinator_address': config.get('coordinator_address') or None,
              'num_processes': config.get('num_processes') or None,
              'process_id': None if config.get('process_id', -1) < 0 else config.process_id}
  given = [k for k, v in explicit.items() if v is not None]
  if given and len(given) != 3:
    raise ValueError(f'config.{", config.".join(given)} set without the others: set coordinator_address, '
                     'num_processes and process_id together, or none of them (SLURM, TPU VMs)')
  jax.distributed.initialize(**explicit)


def is_main() -> bool:
  return jax.process_index() == 0


def agree(value) -> bool:
  """Process 0's boolean `value`, on every process."""
  if jax.process_count() == 1:
    return bool(value)
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(value))))


def any_process(value) -> bool:
  """True on every process when `value` is true on any."""
  if jax.process_count() == 1:
    return bool(value)
  return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(value)))))


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (e.g. until process 0's files are written)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def gather(array: np.ndarray) -> np.ndarray:
  """Every process's equally shaped `array`, stacked in process order: (processes, ...)."""
  if jax.process_count() == 1:
    return np.asarray(array)[None]
  return multihost_utils.process_allgather(np.asarray(array))


def shares_main_directory(directory) -> bool:
  """Whether `directory` here is the same storage as process 0's `directory`: process 0 leaves a token
  there that the others look for (a shared NFS path, or several processes on one host)."""
  if jax.process_count() == 1:
    return True
  token = int(multihost_utils.broadcast_one_to_all(np.int32(secrets.randbits(31))))
  path = pathlib.Path(directory) / f'.process0-{token}'
  if is_main():
    path.write_text('')
  barrier(f'token {token} written')
  shared = path.exists()
  barrier(f'token {token} read')
  if is_main():
    path.unlink()
  return shared


def to_host(tree):
  """numpy copies of a pytree's arrays on every process; arrays sharded over processes are gathered."""
  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return multihost_utils.process_allgather(x, tiled=True)
  return jax.tree.map(one, tree)


def interactive() -> bool:
  """Whether stderr is a terminal. Elsewhere (a SLURM log, a pipe) bars would be carriage-return noise,
  so they are off and stitchjax.metrics prints timestamped lines instead."""
  return sys.stderr.isatty()


def progress(*args, **kwargs):
  """A tqdm bar shown by process 0 only, so that N processes don't print N bars, and on a terminal only."""
  return tqdm(*args, disable=not (is_main() and interactive()), **kwargs)
