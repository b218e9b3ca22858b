"""A run's workdir: held by one run at a time, tied to what its results depend on, written by process 0.

- `session(config)`: what a job holds while it runs: the workdir lock and XLA's persistent
  compilation cache; it records the run (config.json, run_info.json).
- `check_identity`: run.json, what the workdir's results depend on; a run with any of it changed
  stops naming it.
- `check_images`: every image decoded once before any compute.
- `write_json`, `write_results`: process 0 writes (stitchjax/distributed.py), atomically.
"""
import contextlib
import csv
import dataclasses
import fcntl
import io
import json
import os
import pathlib
import socket
import sys
import warnings

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache

from stitchjax import atomic, distributed, metrics
from stitchjax import data as data_lib


def write_json(path: pathlib.Path, obj) -> None:
  """Process 0 writes (stitchjax/distributed.py); the others compute the same and read it back."""
  if distributed.is_main():
    atomic.write_text(path, json.dumps(obj, indent=1, default=float))


def write_results(workdir: pathlib.Path, records: list[dict]) -> None:
  """results.json and results.csv (one row per record, the union of their fields), both atomically."""
  if not distributed.is_main():
    return
  write_json(workdir / 'results.json', records)
  fields = list(dict.fromkeys(k for r in records for k in r))
  out = io.StringIO()
  writer = csv.DictWriter(out, fields, lineterminator='\n')
  writer.writeheader()
  writer.writerows(records)
  atomic.write_text(workdir / 'results.csv', out.getvalue())


def check_identity(workdir: pathlib.Path, identity: dict) -> None:
  """Finished cells are reused by name, so a workdir must only ever see one dataset, set of backbones
  and training setup; anything else would silently mix results. identity: what the results depend on
  (run.json); new backbones may join a workdir, known ones must be the same checkpoints run the same way."""
  path = workdir / 'run.json'
  if not path.exists():
    write_json(path, identity)
    return
  before = json.loads(path.read_text())
  if len(before['classes']) != len(identity['classes']):
    raise ValueError(f'class-count mismatch: {workdir} holds results for {len(before["classes"])} classes, '
                     f'but config.data gives {len(identity["classes"])}; use another workdir')
  for key in identity:
    if key == 'backbones':
      changed = [n for n, d in identity[key].items() if not _same_backbone(before[key].get(n, d), d)]
    else:
      changed = [] if json.loads(json.dumps(identity[key])) == before.get(key) else [key]
    if changed:
      raise ValueError(f'{workdir} holds results computed with a different {key} ({changed}); finished '
                       'cells would be reused. Use another workdir, or restore the previous setting')
  write_json(path, identity | {'backbones': before['backbones'] | identity['backbones']})


def backbone_identity(bb, digest: str) -> dict:
  """What a backbone's cached features and results depend on: its parameters (digest), its architecture at
  the run's image size and its preprocessing (DINOv3's RoPE has the same parameters at every resolution)."""
  setup = dataclasses.replace(bb.config, dtype='float32', remat=False)  # compute settings are the run's
  return {'params': digest, 'config': setup.key(), 'preprocess': bb.preprocessing.to_dict()}


def check_images(workdir: pathlib.Path, dataset, skip_corrupt: bool) -> dict:
  """Every image decoded once before any compute (remembered per split content in the workdir): unreadable
  ones stop the run, or with skip_corrupt are dropped from dataset.splits. Returns {split: images skipped}."""
  record = workdir / 'image_check.json'
  known = json.loads(record.read_text()) if record.exists() else {}
  skipped, annotated = {}, dataset.task == 'segmentation'
  for name, split in list(dataset.splits.items()):
    if split.fingerprint not in known:
      _, errors = data_lib.check_images(split, name, skip_corrupt=True, annotated=annotated)
      known[split.fingerprint] = errors
      write_json(record, known)
    errors = known[split.fingerprint]
    if errors and not skip_corrupt:
      data_lib.check_images(split, name, skip_corrupt=False, annotated=annotated)  # raises
    if errors:
      dataset.splits[name], _ = data_lib.check_images(split, name, skip_corrupt=True, annotated=annotated)
      warnings.warn(f'skipping {len(errors)} unreadable {name} image(s), e.g. {errors[0]}')
    skipped[name] = len(errors)
  return skipped


def _same_backbone(before, now: dict) -> bool:
  """Workdirs written before the identity held a backbone's setup recorded its parameter digest alone."""
  if isinstance(before, str):
    return before == now['params']
  return json.loads(json.dumps(now)) == before


@contextlib.contextmanager
def session(config):
  """What a job holds while it runs: the workdir lock and the persistent compilation cache."""
  with _held(config.workdir), compilation_cache(config):
    metrics.record_run(config.workdir, config, sys.argv)
    yield


@contextlib.contextmanager
def compilation_cache(config):
  """XLA's persistent compilation cache in config.compilation_cache_dir (default: the one JAX is already set to
  use, e.g. by $JAX_COMPILATION_CACHE_DIR, else <cache_dir>/xla; 'none': off), so that a resumed or repeated run
  loads what it compiled before instead of compiling it again.

  Safe to share: JAX writes entries from process 0 only, and a size bound turns on JAX's file lock
  around every read and write, which keeps concurrent runs on one directory from reading half-written
  entries. With several processes on CPUs only process 0 reads them back: each key holds the CPU
  client's topology, which differs between processes, so the others compile again (and JAX's
  jax_share_binary_between_hosts, which waits for process 0's key, hangs there).
  """
  directory = config.get('compilation_cache_dir', '')
  if directory == 'none' or (not directory and jax.config.jax_compilation_cache_dir):
    yield
    return
  directory = directory or str(pathlib.Path(config.get('cache_dir') or pathlib.Path(config.workdir) / 'cache') / 'xla')
  settings = {'jax_compilation_cache_dir': directory, 'jax_compilation_cache_max_size': XLA_CACHE_BYTES,
              # the small programs of a CPU run compile in well under JAX's default 1 s threshold
              'jax_persistent_cache_min_compile_time_secs': 0.0}
  before = {name: getattr(jax.config, name) for name in settings}
  for name, value in settings.items():
    jax.config.update(name, value)
  jax_compilation_cache.reset_cache()  # JAX opens its cache once per process; open this one
  try:
    yield
  finally:
    for name, value in before.items():
      jax.config.update(name, value)
    jax_compilation_cache.reset_cache()


XLA_CACHE_BYTES = 4 * 2**30


@contextlib.contextmanager
def _held(workdir):
  """The workdir lock, held by process 0 for the whole run; the others stop with its error too."""
  with contextlib.ExitStack() as stack:
    error = None
    if distributed.is_main():
      try:
        stack.enter_context(lock(workdir))
      except RuntimeError as e:
        error = e
    if distributed.agree(error is not None):
      raise error or RuntimeError(f'process 0 could not lock the workdir {workdir}; see its error')
    yield


@contextlib.contextmanager
def lock(workdir):
  """One run per workdir. The lock is an flock, which the kernel drops when its process dies, so a
  killed run's lock is never stale; the file records who holds it for the error message."""
  path = pathlib.Path(workdir) / '.lock'
  path.parent.mkdir(parents=True, exist_ok=True)
  f = open(path, 'a+')
  try:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or 'an unknown process'
      raise RuntimeError(f'workdir {workdir} is in use: {path} is held by {holder}. Wait for that run to finish '
                         'or use another workdir') from None
    f.seek(0)
    previous = f.read().strip()
    if previous:
      warnings.warn(f'taking over the lock {path} left by {previous}, which is no longer running')
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()} on {socket.gethostname()}')
    f.flush()
    try:
      yield
    finally:
      f.seek(0)
      f.truncate()
      f.flush()
  finally:
    f.close()  # closing releases the flock
