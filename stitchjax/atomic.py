"""Atomic writes: a reader (or a resumed run) never sees half a file or half a directory.

Files and directories are written under a temporary name beside their destination,
fsynced, and renamed into place; an interrupted write leaves only a hidden
temporary that nothing reads.
"""
import contextlib
import os
import pathlib
import shutil
import tempfile


def write_text(path, text: str) -> None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
  try:
    with os.fdopen(fd, 'w') as f:
      f.write(text)
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
    yield tmp
    if out.exists():
      shutil.rmtree(out)
    os.replace(tmp, out)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
