"""Atomic writes: a reader (or a resumed run) never sees half a file or half a directory.

Files and directories are written under a temporary name beside their destination,
fsynced, and renamed into place; an interrupted write leaves only a hidden
temporary that nothing reads.
"""
import contextlib
import errno
import os
import pathlib
import shutil
import tempfile

import numpy as np


def write_text(path, text: str) -> None:
  write_with(path, lambda f: f.write(text.encode()))


def save_npy(path, array) -> None:
  """np.save, atomically."""
  write_with(path, lambda f: np.save(f, np.asarray(array)))


def save_npz(path, **arrays) -> None:
  """np.savez, atomically."""
  write_with(path, lambda f: np.savez(f, **arrays))


def write_with(path, write) -> None:
  """Calls write(binary file) on a temporary beside `path`, then renames it into place."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
  try:
    with disk_full_is_clear(path), os.fdopen(fd, 'wb') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


@contextlib.contextmanager
def directory(out):
  """Yields a temporary directory that replaces `out` (if any) when the block completes."""
  out = pathlib.Path(out).absolute()
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{out.name}.', dir=out.parent))
  try:
    with disk_full_is_clear(out):
      yield tmp
    if out.exists():
      shutil.rmtree(out)
    os.replace(tmp, out)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)


class DiskFull(OSError):
  """The disk filled while writing; nothing half-written was left for a later run to trust."""


@contextlib.contextmanager
def disk_full_is_clear(what):
  """Turns ENOSPC into an error that says what was being written and that nothing partial remains."""
  try:
    yield
  except OSError as e:
    if e.errno == errno.ENOSPC:
      raise DiskFull(errno.ENOSPC, f'disk full while writing {what}; the partial write was removed. Free space '
                     'and re-run the same command to continue') from e
    raise
