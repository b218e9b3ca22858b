"""Atomic writes: a failed or interrupted write leaves the previous file or directory, never half of one."""
import errno

import numpy as np
import pytest

from stitchjax import atomic


def test_a_write_replaces_the_file_whole_or_not_at_all(tmp_path):
  path = tmp_path / 'sub' / 'results.json'
  atomic.write_text(path, 'first')
  atomic.write_text(path, 'second')
  assert path.read_text() == 'second'

  def dies(f):
    f.write(b'half of the thi')
    raise KeyboardInterrupt  # as if killed mid-write
  with pytest.raises(KeyboardInterrupt):
    atomic.write_with(path, dies)
  assert path.read_text() == 'second' and [p.name for p in path.parent.iterdir()] == ['results.json']
  atomic.save_npy(tmp_path / 'a.npy', np.arange(3))
  atomic.save_npz(tmp_path / 'b.npz', x=np.ones(2))
  assert np.load(tmp_path / 'a.npy').tolist() == [0, 1, 2] and np.load(tmp_path / 'b.npz')['x'].tolist() == [1, 1]


def test_a_directory_replaces_the_old_one_only_when_complete(tmp_path):
  out = tmp_path / 'export'
  with atomic.directory(out) as tmp:
    (tmp / 'params').write_text('v1')
  with pytest.raises(RuntimeError):
    with atomic.directory(out) as tmp:
      (tmp / 'params').write_text('v2, half')
      raise RuntimeError('killed')
  assert (out / 'params').read_text() == 'v1' and [p.name for p in tmp_path.iterdir()] == ['export']
  with atomic.directory(out) as tmp:
    (tmp / 'other').write_text('v3')
  assert [p.name for p in out.iterdir()] == ['other']  # replaced, not merged


def test_a_full_disk_leaves_nothing_half_written(tmp_path):
  out = tmp_path / 'export'
  with pytest.raises(atomic.DiskFull, match=f'disk full while writing {out}'):
    with atomic.directory(out) as tmp:
      (tmp / 'part').write_text('half')
      raise OSError(errno.ENOSPC, 'No space left on device')
  assert list(tmp_path.iterdir()) == []
  with pytest.raises(atomic.DiskFull, match='re-run the same command to continue'):
    atomic.write_with(tmp_path / 'f', lambda f: (_ for _ in ()).throw(OSError(errno.ENOSPC, 'No space')))
  assert list(tmp_path.iterdir()) == []
