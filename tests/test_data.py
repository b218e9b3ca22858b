"""stitchjax.data on miniature copies of each raw dataset layout, written here with PIL."""
import gzip
import importlib.resources
import io
import json
import os
import pathlib
import pickle
import sys

import numpy as np
import pytest
from PIL import Image

from stitchjax import data
from stitchjax import preprocess as pp

RED, BLUE, WHITE = (220, 20, 20), (20, 20, 220), (255, 255, 255)


def _save(path, array, **kwargs):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path, **kwargs)
  return path


def _flat(h, w, colour):
  return np.broadcast_to(np.asarray(colour, np.uint8), (h, w, 3))


def _jpeg(path, array):
  # 4:4:4 at high quality keeps flat colours within a few levels, also next to edges.
  return _save(path, array, quality=95, subsampling=0)


def _counts(split, n_classes):
  return np.bincount(split.labels, minlength=n_classes).tolist()


def _files(split):
  return [split.reader.paths[k] for k in split.keys]


# ----------------------------------------------------------------------------------------- image_folder


@pytest.fixture
def folder(tmp_path):
  """train: 20 images per class of 3 (one nested, plus non-images), test: 4 of cat and 2 of dog."""
  root = tmp_path / 'folder'
  rng = np.random.default_rng(0)
  for split, counts in (('train', {'cat': 20, 'dog': 20, 'bird': 20}), ('test', {'cat': 4, 'dog': 2})):
    for name, n in counts.items():
      for i in range(n):
        sub = 'nested/' if i == 0 else ''
        _save(root / split / name / f'{sub}{i:03d}.png', rng.integers(0, 256, (9 + i % 3, 11, 3)))
      (root / split / name / 'notes.txt').write_text('not an image')
      _save(root / split / name / '._hidden.png', np.zeros((4, 4, 3)))
  return root


def test_image_folder_classes_counts_and_val(folder):
  d = data.load({'kind': 'image_folder', 'root': str(folder), 'val_fraction': 0.25})
  assert d.classes == ['bird', 'cat', 'dog']
  assert _counts(d.splits['train'], 3) == [15, 15, 15]
  assert _counts(d.splits['val'], 3) == [5, 5, 5]  # stratified: 0.25 of each class
  assert _counts(d.splits['test'], 3) == [0, 4, 2]
  train, val = set(_files(d.splits['train'])), set(_files(d.splits['val']))
  assert not train & val and len(train | val) == 60
  for split in d.splits.values():
    for path, label in zip(_files(split), split.labels):
      assert pathlib.Path(path).relative_to(folder).parts[1] == d.classes[label]
    assert split.labels.dtype == np.int32
  image = d.splits['test'].image(0)
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
  expected = np.asarray(Image.open(_files(d.splits['test'])[0]).convert('RGB'))
  np.testing.assert_array_equal(image, expected)


def test_val_rounding_keeps_train_nonempty(folder):
  d = data.load({'kind': 'image_folder', 'root': str(folder), 'val_fraction': 0.1})
  assert _counts(d.splits['val'], 3) == [2, 2, 2]  # 0.1 * 20
  d = data.load({'kind': 'image_folder', 'root': str(folder), 'val_fraction': 0.0})
  assert len(d.splits['val']) == 0 and len(d.splits['train']) == 60
  d = data.load({'kind': 'image_folder', 'root': str(folder), 'val_fraction': 0.99})
  assert _counts(d.splits['train'], 3) == [1, 1, 1]


def test_selection_is_seeded(folder):
  config = {'kind': 'image_folder', 'root': str(folder), 'val_fraction': 0.25}
  a, b = data.load(config), data.load(config)
  c = data.load({**config, 'seed': 1})
  assert _files(a.splits['val']) == _files(b.splits['val'])
  assert _files(a.splits['val']) != _files(c.splits['val'])
  assert _files(a.splits['test']) == _files(c.splits['test'])
  # Splits list examples in pool order (sorted paths), not in draw order.
  for split in a.splits.values():
    assert _files(split) == sorted(_files(split))


def test_limit_per_class(folder):
  config = {'kind': 'image_folder', 'root': str(folder), 'limit_per_class': 3}
  d = data.load(config)
  assert _counts(d.splits['train'], 3) == [3, 3, 3]
  assert _counts(d.splits['val'], 3) == [2, 2, 2]
  assert _counts(d.splits['test'], 3) == [0, 3, 2]
  assert _files(d.splits['train']) == _files(data.load(config).splits['train'])
  assert _files(d.splits['train']) != _files(data.load({**config, 'seed': 5}).splits['train'])


def test_fingerprint(folder):
  config = {'kind': 'image_folder', 'root': str(folder), 'val_fraction': 0.25}
  base = {k: s.fingerprint for k, s in data.load(config).splits.items()}
  assert all(len(f) == 64 for f in base.values()) and len(set(base.values())) == 3
  assert {k: s.fingerprint for k, s in data.load(config).splits.items()} == base
  # The seed changes what train/val hold, not the test split's content.
  reseeded = {k: s.fingerprint for k, s in data.load({**config, 'seed': 1}).splits.items()}
  assert reseeded['train'] != base['train'] and reseeded['val'] != base['val']
  assert reseeded['test'] == base['test']
  # A rewritten file (size and mtime) or a touched one (mtime) changes it.
  test_file = folder / 'test' / 'cat' / '001.png'
  _save(test_file, np.zeros((30, 30, 3)))
  assert data.load(config).splits['test'].fingerprint != base['test']
  changed = data.load(config).splits['test'].fingerprint
  st = os.stat(test_file)
  os.utime(test_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  assert data.load(config).splits['test'].fingerprint != changed
  # A label change: the same file moved to another class.
  touched = data.load(config).splits['test'].fingerprint
  os.makedirs(folder / 'test' / 'bird')
  os.rename(folder / 'test' / 'cat' / '002.png', folder / 'test' / 'bird' / '002.png')
  assert data.load(config).splits['test'].fingerprint != touched


def test_image_folder_errors(folder, tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'nowhere')):
    data.load({'kind': 'image_folder', 'root': str(tmp_path / 'nowhere')})
  _save(folder / 'test' / 'fish' / '0.png', np.zeros((4, 4, 3)))
  with pytest.raises(ValueError, match=r"\['fish'\]"):
    data.load({'kind': 'image_folder', 'root': str(folder)})
  os.remove(folder / 'test' / 'fish' / '0.png')
  os.rmdir(folder / 'test' / 'fish')
  bad = folder / 'test' / 'cat' / '000.png'
  bad.write_bytes(b'\x89PNG\r\n\x1a\n truncated')
  d = data.load({'kind': 'image_folder', 'root': str(folder)})
  i = _files(d.splits['test']).index(str(bad.resolve()))
  with pytest.raises(ValueError, match=f'{bad.resolve()}: cannot decode image'):
    d.splits['test'].image(i)
  os.remove(folder / 'test' / 'cat' / '001.png')
  with pytest.raises(FileNotFoundError, match='001.png'):
    d.splits['test'].image(i + 1)


def test_config_errors(folder):
  with pytest.raises(ValueError, match=r"data.kind='imagenet' is not one of \['aircraft', 'fashion_mnist', "
                                       r"'fmow', 'image_folder', 'inat', 'tfds'\]"):
    data.load({'kind': 'imagenet', 'root': str(folder)})
  with pytest.raises(ValueError, match=r"unknown options \['limit_per_clas'\]"):
    data.load({'kind': 'image_folder', 'root': str(folder), 'limit_per_clas': 3})
  with pytest.raises(ValueError, match=r"needs \['root'\]"):
    data.load({'kind': 'image_folder'})
  with pytest.raises(ValueError, match='val_fraction'):
    data.load({'kind': 'image_folder', 'root': str(folder), 'val_fraction': 1.0})


def test_config_dict_and_pickle(folder):
  ml_collections = pytest.importorskip('ml_collections')
  config = ml_collections.ConfigDict({'kind': 'image_folder', 'root': str(folder), 'limit_per_class': 2})
  split = data.load(config).splits['train']
  clone = pickle.loads(pickle.dumps(split))  # what grain's worker processes receive
  np.testing.assert_array_equal(clone.image(3), split.image(3))
  assert clone.fingerprint == split.fingerprint


# ----------------------------------------------------------------------------------------- batches


def test_batches(folder):
  split = data.load({'kind': 'image_folder', 'root': str(folder)}).splits['train']  # 54 examples
  pre = pp.for_family('dinov2', 28)
  out = list(data.batches(split, pre, 8, seed=None))
  assert len(out) == 7 and out[-1][0].shape == (6, 28, 28, 3)
  images, labels, indices = (np.concatenate(parts) for parts in zip(*out))
  assert images.dtype == np.float32 and labels.dtype == np.int32 and indices.dtype == np.int32
  np.testing.assert_array_equal(indices, np.arange(len(split)))
  np.testing.assert_array_equal(labels, split.labels)
  for i in (0, 17, 53):
    np.testing.assert_array_equal(images[i], pre([split.image(i)])[0])
  # Each backbone gets its own preprocessing of the same images.
  siglip = next(data.batches(split, pp.for_family('siglip', 28), 8, seed=None))[0]
  assert siglip.shape == (8, 28, 28, 3) and not np.allclose(siglip, out[0][0])

  def order(**kw):
    return np.concatenate([b[2] for b in data.batches(split, pre, 8, **kw)])
  first = order(seed=0, epoch=0)
  assert sorted(first.tolist()) == list(range(len(split)))
  np.testing.assert_array_equal(first, np.concatenate(list(data.batch_indices(len(split), 8, seed=0, epoch=0))))
  np.testing.assert_array_equal(first, order(seed=0, epoch=0))
  assert not np.array_equal(first, order(seed=0, epoch=1))
  assert not np.array_equal(first, order(seed=1, epoch=0))
  dropped = list(data.batches(split, pre, 8, seed=0, drop_remainder=True))
  assert len(dropped) == 6 and all(b[0].shape[0] == 8 for b in dropped)
  shuffled = next(data.batches(split, pre, 8, seed=0))
  np.testing.assert_array_equal(shuffled[1], split.labels[shuffled[2]])
  np.testing.assert_array_equal(shuffled[0][0], pre([split.image(int(shuffled[2][0]))])[0])


def test_batch_indices_are_the_one_batcher():
  """Images (data.batches), arrays (train.batches) and the pretraining loop batch by it."""
  idx = list(data.batch_indices(10, 4, seed=1, epoch=2))
  assert [len(i) for i in idx] == [4, 4, 2] and sorted(np.concatenate(idx)) == list(range(10))
  full = list(data.batch_indices(10, 4, seed=1, epoch=2, drop_remainder=True))
  assert [list(i) for i in full] == [list(i) for i in idx[:2]]
  assert [list(i) for i in data.batch_indices(10, 4, seed=1, epoch=3)] != [list(i) for i in idx]
  assert [list(i) for i in data.batch_indices(5, 2, seed=None)] == [[0, 1], [2, 3], [4]]
  with pytest.raises(ValueError, match='batch_size=0 must be a positive int'):
    next(data.batch_indices(5, 0, seed=None))


def test_batches_with_workers_match_in_process(folder):
  split = data.load({'kind': 'image_folder', 'root': str(folder), 'limit_per_class': 4}).splits['train']
  pre = pp.for_family('dinov2', 28)
  one = list(data.batches(split, pre, 5, seed=3))
  two = list(data.batches(split, pre, 5, seed=3, num_workers=2))
  assert len(one) == len(two) == 3
  for a, b in zip(one, two):
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x, y)


def test_empty_split_batches(folder):
  split = data.load({'kind': 'image_folder', 'root': str(folder), 'val_fraction': 0}).splits['val']
  assert list(data.batches(split, pp.for_family('dinov2', 28), 4, seed=0)) == []


# ----------------------------------------------------------------------------------------- fmow

FMOW_CLASSES = ['airport', 'dam', 'port']


def _fmow_image(folder, name, rng):
  """One fMoW-rgb image (blue, a red box) with its JSON, and a _msrgb decoy; returns (path, box)."""
  h, w = int(rng.integers(30, 45)), int(rng.integers(30, 45))
  x, y, bw, bh = int(rng.integers(0, 10)), int(rng.integers(0, 10)), int(rng.integers(8, 18)), int(rng.integers(8, 18))
  array = np.array(_flat(h, w, BLUE))
  array[y:y + bh, x:x + bw] = RED
  path = _jpeg(folder / f'{name}_rgb.jpg', array)
  meta = {'gsd': 0.5, 'img_width': w, 'img_height': h,
          'bounding_boxes': [{'box': [x, y, bw, bh], 'category': folder.parent.name, 'ID': 1}]}
  (folder / f'{name}_rgb.json').write_text(json.dumps(meta))
  _jpeg(folder / f'{name}_msrgb.jpg', _flat(h, w, WHITE))
  (folder / f'{name}_msrgb.json').write_text(json.dumps(meta))
  return path, (x, y, bw, bh)


@pytest.fixture
def fmow(tmp_path):
  """train: 3 instances x 3 images per category; val: 2 x 2; and a false_detection folder."""
  root, rng, boxes = tmp_path / 'fmow-rgb', np.random.default_rng(1), {}
  for split, (instances, images) in (('train', (3, 3)), ('val', (2, 2))):
    for name in FMOW_CLASSES + ['false_detection']:
      for n in range(instances):
        for k in range(images):
          path, box = _fmow_image(root / split / name / f'{name}_{n}', f'{name}_{n}_{k}', rng)
          boxes[str(path.resolve())] = box
  return root, boxes


def test_fmow_balanced_subset_and_crops(fmow):
  root, boxes = fmow
  config = {'kind': 'fmow', 'root': str(root), 'train_per_class': 5, 'test_per_class': 3, 'val_fraction': 0.2}
  d = data.load(config)
  assert d.classes == FMOW_CLASSES
  assert _counts(d.splits['train'], 3) == [4, 4, 4] and _counts(d.splits['val'], 3) == [1, 1, 1]
  assert _counts(d.splits['test'], 3) == [3, 3, 3]
  for name, split in d.splits.items():
    pool = 'val' if name == 'test' else 'train'
    for path, label in zip(_files(split), split.labels):
      parts = pathlib.Path(path).relative_to(root.resolve()).parts
      assert parts[0] == pool and parts[1] == d.classes[label] and path.endswith('_rgb.jpg')
      assert '_msrgb' not in path
  split = d.splits['test']
  for i in range(len(split)):
    crop = split.image(i).astype(int)
    x, y, w, h = boxes[_files(split)[i]]
    assert crop.shape == (h, w, 3)  # no context around the box
    assert np.abs(crop - RED).max() < 40
  again = data.load(config)
  assert [_files(s) for s in again.splits.values()] == [_files(s) for s in d.splits.values()]
  reseeded = data.load({**config, 'seed': 7})
  assert _files(reseeded.splits['test']) != _files(d.splits['test'])
  assert reseeded.splits['test'].fingerprint != d.splits['test'].fingerprint


def test_fmow_box_is_in_the_fingerprint(fmow):
  root, _ = fmow
  config = {'kind': 'fmow', 'root': str(root), 'train_per_class': 9, 'test_per_class': 4}
  before = data.load(config).splits['test']
  json_path = pathlib.Path(_files(before)[0][:-4] + '.json')
  meta = json.loads(json_path.read_text())
  meta['bounding_boxes'][0]['box'][2] += 1
  json_path.write_text(json.dumps(meta))
  after = data.load(config).splits['test']
  assert _files(after) == _files(before) and after.fingerprint != before.fingerprint


def test_fmow_errors(fmow):
  root, _ = fmow
  with pytest.raises(ValueError, match=r'dam \(9 in train/, need 10\)'):
    data.load({'kind': 'fmow', 'root': str(root), 'train_per_class': 10, 'test_per_class': 4})
  with pytest.raises(ValueError, match=r'port \(4 in val/, need 5\)'):
    data.load({'kind': 'fmow', 'root': str(root), 'train_per_class': 9, 'test_per_class': 5})
  with pytest.raises(FileNotFoundError, match=str(root.resolve() / 'val')):
    os.rename(root / 'val', root / 'valx')
    data.load({'kind': 'fmow', 'root': str(root)})
  os.rename(root / 'valx', root / 'val')
  config = {'kind': 'fmow', 'root': str(root), 'train_per_class': 9, 'test_per_class': 4}
  json_path = root / 'val' / 'dam' / 'dam_1' / 'dam_1_0_rgb.json'
  json_path.write_text('{"bounding_boxes": [{"box": [1, 2, 3')
  with pytest.raises(ValueError, match=f'{json_path.resolve()}: malformed JSON'):
    data.load(config)
  json_path.write_text('{"bounding_boxes": []}')
  with pytest.raises(ValueError, match=f'{json_path.resolve()}: expected "bounding_boxes"'):
    data.load(config)
  os.remove(json_path)
  with pytest.raises(FileNotFoundError, match=f'{json_path.resolve()}: not found, expected the fMoW metadata'):
    data.load(config)
  json_path.write_text(json.dumps({'bounding_boxes': [{'box': [500, 500, 5, 5]}]}))
  split = data.load(config).splits['test']
  i = _files(split).index(str(json_path.resolve())[:-5] + '.jpg')
  with pytest.raises(ValueError, match='dam_1_0_rgb.jpg: crop box .* lies outside'):
    split.image(i)


# ----------------------------------------------------------------------------------------- inat

# (id, name, family, train images, val images)
INAT_SPECIES = [(0, 'Hyles lineata', 'Sphingidae', 8, 3), (1, 'Manduca sexta', 'Sphingidae', 7, 3),
                (2, 'Pieris rapae', 'Pieridae', 9, 3), (3, 'Pyrausta acrionalis', 'Pyralidae', 5, 3),
                (4, 'Danaus plexippus', 'Nymphalidae', 10, 3)]


@pytest.fixture
def inat(tmp_path):
  root = tmp_path / 'inat2021'
  rng = np.random.default_rng(2)
  for split in ('train', 'val'):
    ann = {'info': {'year': 2021}, 'images': [], 'annotations': [], 'licenses': [], 'categories': []}
    for cid, name, family, n_train, n_val in INAT_SPECIES:
      genus, epithet = name.split()
      dirname = f'{cid:05d}_Animalia_Arthropoda_Insecta_Lepidoptera_{family}_{genus}_{epithet}'
      ann['categories'].append({'id': cid, 'name': name, 'common_name': name, 'supercategory': 'Insects',
                                'kingdom': 'Animalia', 'phylum': 'Arthropoda', 'class': 'Insecta',
                                'order': 'Lepidoptera', 'family': family, 'genus': genus,
                                'specific_epithet': epithet, 'image_dir_name': dirname})
      for k in range(n_train if split == 'train' else n_val):
        image_id = len(ann['images']) + (0 if split == 'train' else 10_000)
        file_name = f'{split}/{dirname}/{image_id:08x}-{k}.jpg'
        _jpeg(root / file_name, rng.integers(0, 256, (12, 10, 3)))
        ann['images'].append({'id': image_id, 'width': 10, 'height': 12, 'file_name': file_name,
                              'license': 0, 'date': '2020-01-01', 'latitude': 0.0, 'longitude': 0.0})
        ann['annotations'].append({'id': image_id, 'image_id': image_id, 'category_id': cid})
    (root / f'{split}.json').write_text(json.dumps(ann))
  return root


def test_inat_subset(inat):
  config = {'kind': 'inat', 'root': str(inat), 'train_per_class': 4, 'test_per_class': 2, 'val_fraction': 0.25}
  with pytest.warns(UserWarning, match=r'dropped 1 of 4 species .*Pyrausta acrionalis \(5 train\)'):
    d = data.load(config)
  assert d.classes == ['Hyles lineata', 'Manduca sexta', 'Pieris rapae']
  assert _counts(d.splits['train'], 3) == [3, 3, 3] and _counts(d.splits['val'], 3) == [1, 1, 1]
  assert _counts(d.splits['test'], 3) == [2, 2, 2]
  train = set(_files(d.splits['train'])) | set(_files(d.splits['val']))
  assert not train & set(_files(d.splits['test']))
  for split in d.splits.values():
    for path, label in zip(_files(split), split.labels):
      assert '/train/' in path and d.classes[label].replace(' ', '_') in path
    assert split.image(0).shape == (12, 10, 3)
  with pytest.warns(UserWarning):
    reseeded = data.load({**config, 'seed': 3})
  assert _files(reseeded.splits['test']) != _files(d.splits['test'])


def test_inat_test_from_val(inat):
  config = {'kind': 'inat', 'root': str(inat), 'train_per_class': 5, 'test_per_class': 3, 'test_from': 'val',
            'families': ['Sphingidae', 'Pyralidae']}
  d = data.load(config)
  assert d.classes == ['Hyles lineata', 'Manduca sexta', 'Pyrausta acrionalis']
  assert _counts(d.splits['test'], 3) == [3, 3, 3]
  assert all('/val/' in p for p in _files(d.splits['test']))


def test_inat_errors(inat):
  config = {'kind': 'inat', 'root': str(inat), 'train_per_class': 4, 'test_per_class': 2}
  with pytest.raises(ValueError, match=r"no category has family in \['Sphingidea'\]"):
    data.load({**config, 'families': ['Sphingidae', 'Sphingidea']})
  with pytest.raises(ValueError, match='no species'), pytest.warns(UserWarning, match=r'100 \+ 2 train images'):
    data.load({**config, 'train_per_class': 100})
  ann = json.loads((inat / 'train.json').read_text())
  del ann['annotations'][3]['category_id']
  (inat / 'train.json').write_text(json.dumps(ann))
  with pytest.raises(ValueError, match=r"train.json: annotations\[3\] has no field 'category_id'"):
    data.load(config)
  (inat / 'train.json').write_text('{"images": [')
  with pytest.raises(ValueError, match=f'{inat.resolve() / "train.json"}: malformed JSON'):
    data.load(config)
  os.remove(inat / 'train.json')
  with pytest.raises(FileNotFoundError, match=f'{inat.resolve() / "train.json"}: not found'):
    data.load(config)


# ----------------------------------------------------------------------------------------- aircraft

AIRCRAFT = ['707-320', 'F-16A/B', 'Cessna 172']


@pytest.fixture
def aircraft(tmp_path):
  """Blue images with a 20-row white banner; 6 trainval and 3 test images per variant."""
  root = tmp_path / 'fgvc-aircraft-2013b'
  (root / 'data').mkdir(parents=True)
  (root / 'data' / 'variants.txt').write_text('\n'.join(AIRCRAFT) + '\n')
  image_id = 1000000
  for list_name, n in (('images_variant_trainval.txt', 6), ('images_variant_test.txt', 3)):
    lines = []
    for variant in AIRCRAFT:
      for _ in range(n):
        image_id += 1
        array = np.array(_flat(50, 40, BLUE))
        array[-20:] = WHITE
        _jpeg(root / 'data' / 'images' / f'{image_id}.jpg', array)
        lines.append(f'{image_id} {variant}')
    (root / 'data' / list_name).write_text('\n'.join(lines) + '\n')
  return root


def test_aircraft(aircraft):
  d = data.load({'kind': 'aircraft', 'root': str(aircraft), 'val_fraction': 0.34})
  assert d.classes == AIRCRAFT  # variants.txt order
  assert _counts(d.splits['train'], 3) == [4, 4, 4] and _counts(d.splits['val'], 3) == [2, 2, 2]
  assert _counts(d.splits['test'], 3) == [3, 3, 3]
  lines = (aircraft / 'data' / 'images_variant_test.txt').read_text().split('\n')
  first_id, first_variant = lines[0].split(' ', 1)
  assert _files(d.splits['test'])[0].endswith(f'data/images/{first_id}.jpg')
  assert d.classes[d.splits['test'].labels[0]] == first_variant
  image = d.splits['test'].image(0).astype(int)
  assert image.shape == (30, 40, 3)  # the banner's 20 rows are gone
  assert np.abs(image - BLUE).max() < 40


def test_aircraft_errors(aircraft):
  config = {'kind': 'aircraft', 'root': str(aircraft)}
  path = aircraft / 'data' / 'images_variant_test.txt'
  lines = path.read_text().split('\n')
  path.write_text('\n'.join(lines[:2] + ['1000099 Boeing 999'] + lines[2:]))
  with pytest.raises(ValueError, match="images_variant_test.txt:3: '1000099 Boeing 999'"):
    data.load(config)
  os.remove(aircraft / 'data' / 'variants.txt')
  with pytest.raises(FileNotFoundError, match='variants.txt: not found'):
    data.load(config)


def test_aircraft_short_image_is_an_error(aircraft):
  d = data.load({'kind': 'aircraft', 'root': str(aircraft)})
  _jpeg(_files(d.splits['test'])[0], _flat(15, 40, BLUE))
  with pytest.raises(ValueError, match='is 15 rows high, expected more than the 20-row banner'):
    d.splits['test'].image(0)


# ----------------------------------------------------------------------------------------- fashion_mnist


def _idx(path, array, magic_ndim):
  header = bytes([0, 0, 8, magic_ndim]) + np.asarray(array.shape, '>i4').tobytes()
  raw = header + np.ascontiguousarray(array, np.uint8).tobytes()
  if str(path).endswith('.gz'):
    raw = gzip.compress(raw)
  pathlib.Path(path).write_bytes(raw)


@pytest.fixture
def fashion(tmp_path):
  """30 train images (3 per class; image i filled with value i) and 10 test images; train images gzipped."""
  root = tmp_path / 'fashion'
  root.mkdir()
  for prefix, n, ext in (('train', 30, '.gz'), ('t10k', 10, '')):
    labels = np.arange(n) % 10
    _idx(root / f'{prefix}-images-idx3-ubyte{ext}', np.arange(n)[:, None, None] * np.ones((1, 28, 28)), 3)
    _idx(root / f'{prefix}-labels-idx1-ubyte', labels, 1)
  return root


def test_fashion_mnist(fashion):
  d = data.load({'kind': 'fashion_mnist', 'root': str(fashion), 'val_fraction': 0.34})
  assert d.classes == ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker',
                       'Bag', 'Ankle boot']
  assert _counts(d.splits['train'], 10) == [2] * 10 and _counts(d.splits['val'], 10) == [1] * 10
  assert _counts(d.splits['test'], 10) == [1] * 10
  split = d.splits['train']
  for i in range(len(split)):
    image = split.image(i)
    assert image.shape == (28, 28, 3) and image.dtype == np.uint8
    assert (image == split.keys[i]).all() and split.labels[i] == split.keys[i] % 10
  pre = pp.for_family('dinov2', 28)
  images, labels, _ = next(data.batches(split, pre, 4, seed=None))
  assert images.shape == (4, 28, 28, 3)
  np.testing.assert_array_equal(labels, split.labels[:4])


def test_classes_keeps_and_relabels_in_the_given_order(fashion):
  full = data.load({'kind': 'fashion_mnist', 'root': str(fashion), 'val_fraction': 0.34})
  for wanted in ((7, 5, 'Bag'), ['Sneaker', 'Sandal', 8]):  # indices, names, or both
    d = data.load({'kind': 'fashion_mnist', 'root': str(fashion), 'val_fraction': 0.34, 'classes': wanted})
    assert d.classes == ['Sneaker', 'Sandal', 'Bag']
    for name, split in d.splits.items():
      assert _counts(split, 3) == ([2, 2, 2] if name == 'train' else [1, 1, 1])
      for i in range(len(split)):  # image k has original label k % 10
        assert d.classes[split.labels[i]] == data.FASHION_MNIST_CLASSES[split.keys[i] % 10]
      assert list(split.keys) == sorted(split.keys)  # pool order, not the order of `classes`
      # Draws are keyed by class name, so a kept class gets the same val examples as without `classes`.
      kept = [k for k in full.splits[name].keys if k % 10 in (7, 5, 8)]
      np.testing.assert_array_equal(split.keys, kept)
  for bad, match in ((('Sandal', 5), r"names \['Sandal'\] more than once"), ((10,), 'neither a class name'),
                     (('sandal',), 'neither a class name'), ((), 'non-empty'), ('Sandal', 'non-empty')):
    with pytest.raises(ValueError, match=match):
      data.load({'kind': 'fashion_mnist', 'root': str(fashion), 'classes': bad})


def test_classes_works_for_every_kind(folder):
  d = data.load({'kind': 'image_folder', 'root': str(folder), 'classes': ['dog', 'bird']})
  assert d.classes == ['dog', 'bird']
  assert _counts(d.splits['test'], 2) == [2, 0]
  for split in d.splits.values():
    for path, label in zip(_files(split), split.labels):
      assert pathlib.Path(path).relative_to(folder).parts[1] == d.classes[label]


def test_fashion_mnist_errors(fashion, tmp_path):
  with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist'):
    data.load({'kind': 'fashion_mnist', 'root': str(tmp_path / 'nowhere')})
  (fashion / 't10k-labels-idx1-ubyte').write_bytes(b'\x00\x00\x08\x03' + b'\x00' * 12)
  with pytest.raises(ValueError, match=r't10k-labels-idx1-ubyte: expected an IDX file .*got magic 00 00 08 03'):
    data.load({'kind': 'fashion_mnist', 'root': str(fashion)})
  os.remove(fashion / 't10k-labels-idx1-ubyte')
  with pytest.raises(FileNotFoundError, match=r't10k-labels-idx1-ubyte\[.gz\]: not found.*apt-get install'):
    data.load({'kind': 'fashion_mnist', 'root': str(fashion)})


@pytest.mark.skipif(not os.path.isdir(data.FASHION_MNIST_ROOT), reason='dataset-fashion-mnist not installed')
def test_fashion_mnist_installed_package():
  d = data.load({'kind': 'fashion_mnist'})
  assert [len(d.splits[k]) for k in ('train', 'val', 'test')] == [54000, 6000, 10000]
  assert _counts(d.splits['test'], 10) == [1000] * 10


# ----------------------------------------------------------------------------------------- tfds


@pytest.fixture(scope='module')
def tfds_root(tmp_path_factory):
  """A real array_record tfds dataset ('stitchjax_tiny'), built without TensorFlow.

  Building needs two workarounds that reading does not: images go in as encoded
  PNG bytes (tfds encodes arrays with TensorFlow), and tfds 4.9.10 looks up
  `importlib_resources.abc.Traversable` while preparing, a package this venv
  lacks; the stdlib's importlib.resources has the same class.
  """
  tfds = pytest.importorskip('tensorflow_datasets')
  root = tmp_path_factory.mktemp('tfds')

  with pytest.MonkeyPatch.context() as mp, tfds.core.registered.skip_registration():
    if 'importlib_resources' not in sys.modules:
      mp.setitem(sys.modules, 'importlib_resources', importlib.resources)

    class StitchjaxTiny(tfds.core.GeneratorBasedBuilder):
      VERSION = tfds.core.Version('1.0.0')

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.ClassLabel(names=['zebra', 'apple', 'mango'])}))

      def _split_generators(self, dl_manager):
        return {'train': self._generate_examples(12, 0), 'test': self._generate_examples(6, 100)}

      def _generate_examples(self, n, offset):
        for i in range(n):
          buf = io.BytesIO()
          Image.fromarray(np.full((8 + i % 3, 10, 3), offset + i, np.uint8)).save(buf, 'PNG')
          yield i, {'image': buf.getvalue(), 'label': i % 3}

    StitchjaxTiny(data_dir=str(root), file_format='array_record').download_and_prepare()
  return root


def test_tfds(tfds_root):
  d = data.load({'kind': 'tfds', 'name': 'stitchjax_tiny', 'root': str(tfds_root), 'val_fraction': 0.25})
  assert 'tensorflow' not in sys.modules
  assert d.classes == ['zebra', 'apple', 'mango']  # the ClassLabel's order
  assert _counts(d.splits['train'], 3) == [3, 3, 3] and _counts(d.splits['val'], 3) == [1, 1, 1]
  assert _counts(d.splits['test'], 3) == [2, 2, 2]
  # tfds shuffles records when writing: find each record's value, label and shape by its content.
  for split, offset in ((d.splits['train'], 0), (d.splits['val'], 0), (d.splits['test'], 100)):
    for i in range(len(split)):
      image = split.image(i)
      value = int(image[0, 0, 0]) - offset
      assert image.dtype == np.uint8 and image.shape == (8 + value % 3, 10, 3) and (image == image[0, 0]).all()
      assert split.labels[i] == value % 3
  train_values = {int(d.splits['train'].image(i)[0, 0, 0]) for i in range(9)}
  val_values = {int(d.splits['val'].image(i)[0, 0, 0]) for i in range(3)}
  assert not train_values & val_values and len(train_values | val_values) == 12
  images, labels, indices = next(data.batches(d.splits['test'], pp.for_family('dinov2', 28), 4, seed=None))
  assert images.shape == (4, 28, 28, 3) and indices.tolist() == [0, 1, 2, 3]
  again = data.load({'kind': 'tfds', 'name': 'stitchjax_tiny', 'root': str(tfds_root), 'val_fraction': 0.25})
  assert again.splits['train'].fingerprint == d.splits['train'].fingerprint
  assert pickle.loads(pickle.dumps(d.splits['test'])).image(2).shape == d.splits['test'].image(2).shape


def test_tfds_errors(tfds_root, tmp_path):
  with pytest.raises(ValueError, match=f"'stitchjax_nothing'.*data_dir='{tfds_root}'.*Expected"):
    data.load({'kind': 'tfds', 'name': 'stitchjax_nothing', 'root': str(tfds_root)})
  with pytest.raises(ValueError, match=r"expected a Image feature 'img'"):
    data.load({'kind': 'tfds', 'name': 'stitchjax_tiny', 'root': str(tfds_root), 'image_key': 'img'})
  with pytest.raises(ValueError, match=r"needs \['name'\]"):
    data.load({'kind': 'tfds', 'root': str(tfds_root)})
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'none')):
    data.load({'kind': 'tfds', 'name': 'stitchjax_tiny', 'root': str(tmp_path / 'none')})
