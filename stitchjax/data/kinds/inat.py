"""Kind 'inat': iNaturalist 2021, root/train.json and root/val.json (COCO style:
images, annotations, categories with taxonomy fields such as `family`),
image paths are root/<file_name>. families=('Sphingidae', 'Pieridae',
'Pyralidae'), train_per_class=200, test_per_class=50, test_from='train'.
Val 2021 has only 10 images per species, so by default both the train and
the test images are drawn, disjointly, from train.json; test_from='val'
draws the test images from val.json instead (then test_per_class <= 10).
Species short of images are dropped with a warning that lists them (we
take this to be how the paper arrives at 106 species). Classes are the
species' scientific names (`name`).
"""
import pathlib
import warnings

from stitchjax.data import files
from stitchjax.data.splits import Split, draw

OPTIONS = {'families': ('Sphingidae', 'Pieridae', 'Pyralidae'), 'train_per_class': 200, 'test_per_class': 50,
           'test_from': 'train'}


def load(c) -> tuple[Split, Split]:
  root = files.root_dir(c)
  families = (c['families'],) if isinstance(c['families'], str) else tuple(c['families'])
  if c['test_from'] not in ('train', 'val'):
    raise ValueError(f'data.test_from={c["test_from"]!r} must be "train" or "val"')
  categories, train_pool = _annotations(root / 'train.json')
  species = {i: cat['name'] for i, cat in categories.items() if cat.get('family') in families}
  found = {cat.get('family') for cat in categories.values()}
  absent = [f for f in families if f not in found]
  if absent:
    raise ValueError(f'{root / "train.json"}: no category has family in {absent}')
  names = sorted(species.values())
  if len(set(names)) != len(names):
    raise ValueError(f'{root / "train.json"}: species names are not unique')
  n_train, n_test = c['train_per_class'], c['test_per_class']
  if c['test_from'] == 'val':
    test_pool = _annotations(root / 'val.json')[1]
    counts = {i: (len(train_pool.get(i, [])), len(test_pool.get(i, []))) for i in species}
    enough = {i: a >= n_train and b >= n_test for i, (a, b) in counts.items()}
    count_text = {i: f'{a} train + {b} val' for i, (a, b) in counts.items()}
  else:
    counts = {i: len(train_pool.get(i, [])) for i in species}
    enough = {i: n >= n_train + n_test for i, n in counts.items()}
    count_text = {i: f'{n} train' for i, n in counts.items()}
  dropped = sorted(species[i] + f' ({count_text[i]})' for i in species if not enough[i])
  if dropped:
    need = f'{n_train} train + {n_test} val' if c['test_from'] == 'val' else f'{n_train} + {n_test} train'
    warnings.warn(f'inat: dropped {len(dropped)} of {len(species)} species with fewer than {need} '
                  f'images: {", ".join(dropped)}')
  kept = {i: name for i, name in species.items() if enough[i]}
  if not kept:
    raise ValueError(f'inat at {root}: no species of {families} has enough images ({n_train} train, '
                     f'{n_test} test)')
  classes = sorted(kept.values())
  label = {name: k for k, name in enumerate(classes)}
  train_items, test_items = [], []
  for i, name in sorted(kept.items(), key=lambda kv: label[kv[1]]):
    if c['test_from'] == 'val':
      (train,) = draw(train_pool[i], (n_train,), c['seed'], 'inat', 'train', name)
      (test,) = draw(test_pool[i], (n_test,), c['seed'], 'inat', 'test', name)
    else:
      train, test = draw(train_pool[i], (n_train, n_test), c['seed'], 'inat', name)
    train_items += [(root / f, label[name]) for f in train]
    test_items += [(root / f, label[name]) for f in test]
  return files.file_split('inat', classes, train_items), files.file_split('inat', classes, test_items)


def _annotations(path: pathlib.Path) -> tuple[dict[int, dict], dict[int, list[str]]]:
  """(category id -> category, category id -> sorted file_names) of an iNat 2021 COCO-style JSON."""
  expected = 'iNaturalist 2021 COCO-style JSON with "images", "annotations" and "categories"'
  data = files.read_json(path, expected)
  if not isinstance(data, dict) or any(not isinstance(data.get(k), list)
                                       for k in ('images', 'annotations', 'categories')):
    raise ValueError(f'{path}: expected {expected} lists')
  categories = {_field(cat, 'id', path, 'categories', j): cat for j, cat in enumerate(data['categories'])}
  for j, cat in enumerate(data['categories']):
    _field(cat, 'name', path, 'categories', j)
  file_names = {_field(im, 'id', path, 'images', j): _field(im, 'file_name', path, 'images', j)
           for j, im in enumerate(data['images'])}
  pools = {}
  for j, ann in enumerate(data['annotations']):
    image_id = _field(ann, 'image_id', path, 'annotations', j)
    category_id = _field(ann, 'category_id', path, 'annotations', j)
    if image_id not in file_names or category_id not in categories:
      raise ValueError(f'{path}: annotations[{j}] refers to image {image_id} or category {category_id}, '
                       'which is not listed')
    pools.setdefault(category_id, []).append(file_names[image_id])
  return categories, {k: sorted(v) for k, v in pools.items()}


def _field(record, key, path, table, j):
  if not isinstance(record, dict) or key not in record:
    raise ValueError(f'{path}: {table}[{j}] has no field {key!r}')
  return record[key]
