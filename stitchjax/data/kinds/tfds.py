"""Kind 'tfds': tfds.data_source(name, split, data_dir=root) over array_record files;
name (required), train_split='train', test_split='test', image_key='image',
label_key='label'. Images come as encoded bytes (tfds SkipDecoding) and are
decoded with PIL here, so no TensorFlow is needed; classes are the
ClassLabel names.
"""
import pathlib

import numpy as np

from stitchjax.data import files, readers
from stitchjax.data.splits import Split

OPTIONS = {'name': None, 'train_split': 'train', 'test_split': 'test', 'image_key': 'image', 'label_key': 'label'}


def load(c) -> tuple[Split, Split]:
  root = files.root_dir(c)
  return tuple(_split(c, root, c[key]) for key in ('train_split', 'test_split'))


def _split(c, root: pathlib.Path, split: str) -> Split:
  tfds = readers.tfds_module('tfds')
  reader = readers.TfdsReader(c['name'], split, str(root), c['image_key'])
  features = reader.source.dataset_info.features
  where = f'tfds dataset {c["name"]!r} in {reader.source.dataset_info.data_dir}'
  for key, kind in ((c['image_key'], tfds.features.Image), (c['label_key'], tfds.features.ClassLabel)):
    if key not in features or not isinstance(features[key], kind):
      raise ValueError(f'{where}: expected a {kind.__name__} feature {key!r}, features are {list(features)}')
  n = len(reader.source)
  labels = np.empty(n, np.int32)
  for start in range(0, n, 1024):
    records = reader.source.__getitems__(range(start, min(start + 1024, n)))
    labels[start:start + len(records)] = [r[c['label_key']] for r in records]
  classes = tuple(features[c['label_key']].names)
  return Split('tfds', classes, reader, np.arange(n), labels)
