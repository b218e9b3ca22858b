"""Kind 'ade20k': the official ADEChallengeData2016 release, root/images/{training,
validation}/<id>.jpg and root/annotations/{training,validation}/<id>.png
(mode L, values 0..150). training -> train (val is carved from it),
validation (2,000 images, the labelled held-out split) -> test. Every image
and every annotation must have its partner of the same stem. All images are
one group ('scene'), so limit_per_class limits images per split.
"""
import os
import pathlib

import numpy as np

from stitchjax.data import files, readers
from stitchjax.data.splits import Split

# ADE20K's 150 pixel classes in annotation order (value k = class k - 1), short names as in mmseg.
PIXEL_CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass', 'cabinet',
    'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk',
    'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path',
    'stairs', 'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase',
    'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove', 'palm',
    'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus', 'towel', 'light',
    'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television receiver', 'airplane',
    'dirt track', 'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster',
    'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything', 'swimming pool', 'stool',
    'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank',
    'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture',
    'hood', 'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor',
    'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag')
OPTIONS = {}


def load(c) -> tuple[Split, Split]:
  root = files.root_dir(c)
  layout = ('the ADEChallengeData2016 layout: images/{training,validation}/*.jpg, '
            'annotations/{training,validation}/*.png')
  splits = []
  for folder in ('training', 'validation'):
    images = _by_stem(files.directory(root / 'images' / folder, f'<id>.jpg images ({layout})'), '.jpg')
    annotations = _by_stem(files.directory(root / 'annotations' / folder, f'<id>.png label maps ({layout})'), '.png')
    if not images:
      raise ValueError(f'{root / "images" / folder}: no .jpg images ({layout})')
    unpaired = [(f'images/{folder}', sorted(set(images) - set(annotations)), f'annotations/{folder}', '.png'),
                (f'annotations/{folder}', sorted(set(annotations) - set(images)), f'images/{folder}', '.jpg')]
    for have, stems, lacking, ext in unpaired:
      if stems:
        shown = ', '.join(stems[:5]) + (f' and {len(stems) - 5} more' if len(stems) > 5 else '')
        raise ValueError(f'{root}: {len(stems)} file(s) in {have} have no {ext} partner of the same name in '
                         f'{lacking}: {shown}')
    stems = sorted(images)
    reader = readers.FileReader(tuple(images[k] for k in stems), annotations=tuple(annotations[k] for k in stems),
                        num_classes=len(PIXEL_CLASSES))
    splits.append(Split('ade20k', ('scene',), reader, np.arange(len(stems)), np.zeros(len(stems))))
  return tuple(splits)


def _by_stem(folder: pathlib.Path, ext: str) -> dict[str, str]:
  return {e.name[:-len(ext)]: str(folder / e.name) for e in os.scandir(folder)
          if e.name.endswith(ext) and not e.name.startswith('.')}
