"""The feature cache: what forward computes, stored once in bfloat16, keyed by what it depends on, built
in chunks that survive a kill, and never used when corrupt."""
import errno
import pathlib
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest

import helpers as H
from stitchjax import atomic, data, features, load_backbone

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def siglip(tmp_path_factory):
  path = tmp_path_factory.mktemp('siglip')
  H.build('siglip', path)
  return path


def test_an_entry_holds_the_forward_in_bfloat16_and_is_computed_once(siglip, tmp_path, monkeypatch):
  bb = load_backbone(siglip)
  split = _image_split(tmp_path / 'imgs')
  cache = features.Cache(tmp_path / 'cache')
  # One batch of the whole split both ways: XLA's results may differ in the last bit between batch sizes.
  entry = cache.tokens(bb, 'bb', split, 'train', layers=(2, 1), final=True, pooled=True, batch_size=len(split))
  images = next(data.batches(split, bb.preprocess, len(split), seed=None))[0]
  direct = features.forward(bb, bb.params, images, layers=(1, 2), final=True, pooled=True)
  assert sorted(entry) == ['final', 'layer_1', 'layer_2', 'pooled']
  for name, x in direct.items():
    assert entry[name].dtype == features.BF16 and entry[name].shape == x.shape
    np.testing.assert_array_equal(np.asarray(entry[name]), np.asarray(x).astype(features.BF16))
  assert np.asarray(direct['layer_2']).std() > 0 and not np.allclose(direct['layer_1'], direct['layer_2'])
  # The same request is read back; another set of layers is another entry.
  monkeypatch.setattr(features, 'forward', lambda *a, **k: pytest.fail('a cached entry was computed again'))
  again = features.Cache(tmp_path / 'cache').tokens(bb, 'bb', split, 'train', layers=(1, 2), final=True, pooled=True)
  np.testing.assert_array_equal(np.asarray(again['final']), np.asarray(entry['final']))
  monkeypatch.undo()
  cache.tokens(bb, 'bb', split, 'train', layers=(1,), final=True)
  assert len([p for p in (tmp_path / 'cache').iterdir() if not p.name.startswith('.')]) == 2


def test_a_full_disk_while_caching_features_is_clear(siglip, tmp_path, monkeypatch):
  bb = load_backbone(siglip)
  split = _image_split(tmp_path / 'imgs')

  def full(*a, **k):
    raise OSError(errno.ENOSPC, 'No space left on device')
  monkeypatch.setattr(np.lib.format, 'open_memmap', full)
  cache = features.Cache(tmp_path / 'cache')
  with pytest.raises(atomic.DiskFull, match='disk full while writing'):
    cache.tokens(bb, 'bb', split, 'train', layers=(1,), final=True)
  assert [p.name for p in (tmp_path / 'cache').iterdir()] == []


def _image_split(root, per_class=3):
  for c in ('a', 'b'):
    for split in ('train', 'test'):
      (root / split / c).mkdir(parents=True)
      for i in range(per_class):
        Image.fromarray(np.full((20, 20, 3), 40 * i % 256, np.uint8)).save(root / split / c / f'{i}.png')
  return data.load({'kind': 'image_folder', 'root': str(root), 'val_fraction': 0.3}).splits['train']


def test_a_corrupt_cache_entry_is_rebuilt_never_used(siglip, tmp_path):
  bb = load_backbone(siglip)
  split = _image_split(tmp_path / 'imgs')
  cache = features.Cache(tmp_path / 'cache')
  good = np.array(cache.tokens(bb, 'bb', split, 'train', layers=(1,), final=True)['final'])
  entry = next(p for p in (tmp_path / 'cache').iterdir() if not p.name.startswith('.'))
  data_file = entry / 'final.npy'
  raw = bytearray(data_file.read_bytes())
  raw[-10:] = b'\x7f' * 10
  data_file.write_bytes(bytes(raw))
  with pytest.warns(UserWarning, match=r'final.npy does not match its checksum\); rebuilding'):
    again = np.array(features.Cache(tmp_path / 'cache').tokens(bb, 'bb', split, 'train', layers=(1,),
                                                                final=True)['final'])
  np.testing.assert_array_equal(again, good)


BUILD = '''
import sys
from stitchjax import data, features, load_backbone
split = data.load({'kind': 'image_folder', 'root': sys.argv[2], 'val_fraction': 0.3}).splits['train']
cache = features.Cache(sys.argv[3], chunk_bytes=int(sys.argv[4]))
cache.tokens(load_backbone(sys.argv[1]), 'bb', split, 'train', layers=(1,), final=True, batch_size=2)
'''


def test_a_killed_cache_build_resumes_at_its_last_chunk(siglip, tmp_path, monkeypatch):
  bb = load_backbone(siglip)
  _image_split(tmp_path / 'imgs', per_class=8)
  split = data.load({'kind': 'image_folder', 'root': str(tmp_path / 'imgs'), 'val_fraction': 0.3}).splits['train']
  one_batch = 2 * 2 * bb.config.num_tokens * bb.config.dim * 2  # bytes of 2 examples in layer_1 and final
  whole = features.Cache(tmp_path / 'whole', chunk_bytes=one_batch)
  reference = {k: np.array(v) for k, v in whole.tokens(bb, 'bb', split, 'train', layers=(1,), final=True,
                                                         batch_size=2).items()}
  chunks = -(-len(split) // 2)
  assert chunks >= 5
  p = subprocess.Popen([sys.executable, '-c', BUILD, str(siglip), str(tmp_path / 'imgs'),
                        str(tmp_path / 'cache'), str(one_batch)], cwd=ROOT, stderr=subprocess.PIPE)
  records = lambda: list((tmp_path / 'cache').glob('.*.partial/chunks/*.json'))
  deadline = time.monotonic() + 120
  while len(records()) < 2 and p.poll() is None and time.monotonic() < deadline:
    time.sleep(0.01)
  p.kill()
  _, err = p.communicate()
  done_before = len(records())
  assert 2 <= done_before < chunks, err.decode()[-2000:]
  computed = []
  batches = data.batches
  monkeypatch.setattr(data, 'batches', lambda split, *a, **k: computed.append(len(split)) or batches(split, *a, **k))
  resumed = features.Cache(tmp_path / 'cache', chunk_bytes=one_batch).tokens(bb, 'bb', split, 'train', layers=(1,),
                                                                               final=True, batch_size=2)
  assert len(computed) == chunks - done_before  # the finished chunks were not computed again
  for k, v in reference.items():
    np.testing.assert_array_equal(np.array(resumed[k]), v)
  assert [p.name for p in (tmp_path / 'cache').iterdir() if p.name.startswith('.')] == []
