"""Kind 'scene_parse150': the same data prepared as the tfds dataset scene_parse150
(array_record, read without TensorFlow like `tfds`); name='scene_parse150',
train_split='train', test_split='test', image_key='image',
annotation_key='annotation'.
"""
import numpy as np

from stitchjax.data import files, readers
from stitchjax.data.kinds.ade20k import PIXEL_CLASSES
from stitchjax.data.splits import Split

OPTIONS = {'name': 'scene_parse150', 'train_split': 'train', 'test_split': 'test', 'image_key': 'image',
           'annotation_key': 'annotation'}


def load(c) -> tuple[Split, Split]:
  tfds = readers.tfds_module('scene_parse150')
  root, splits = files.root_dir(c), []
  for split in (c['train_split'], c['test_split']):
    reader = readers.TfdsReader(c['name'], split, str(root), c['image_key'], c['annotation_key'], len(PIXEL_CLASSES))
    features = reader.source.dataset_info.features
    for key in (c['image_key'], c['annotation_key']):
      if key not in features or not isinstance(features[key], tfds.features.Image):
        raise ValueError(f'tfds dataset {c["name"]!r} in {reader.source.dataset_info.data_dir}: expected an Image '
                         f'feature {key!r}, features are {list(features)}')
    n = len(reader.source)
    splits.append(Split('scene_parse150', ('scene',), reader, np.arange(n), np.zeros(n)))
  return tuple(splits)
