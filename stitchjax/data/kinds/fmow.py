"""Kind 'fmow': the fMoW-rgb release, root/{train,val}/<category>/<category>_<n>/
<category>_<n>_<k>_rgb.jpg with <...>_rgb.json beside each image. The
pan-sharpened `_rgb.jpg` images are used (not `_msrgb.jpg`); the
`false_detection` folder, if present, is not a class (62 classes). The
paper's class-balanced subset: train_per_class=230 drawn from train/ and
test_per_class=26 drawn from val/, fMoW's labelled held-out split (the
paper does not say which pool; test/ shipped without labels). Each image is cropped to the first
of its JSON's `bounding_boxes` ([x, y, w, h] pixels) with no added context:
the paper does not say it pads, and fMoW baselines that do use different
amounts. A class short of images is an error that names it and its count.
"""
import math
import os
import pathlib

from stitchjax.data import files
from stitchjax.data.splits import Split, draw

NOT_A_CLASS = 'false_detection'
OPTIONS = {'train_per_class': 230, 'test_per_class': 26}


def load(c) -> tuple[Split, Split]:
  root = files.root_dir(c)
  pools = {'train': _scan(root / 'train'), 'test': _scan(root / 'val')}
  classes = sorted(pools['train'])
  unknown = sorted(set(pools['test']) - set(classes))
  if unknown:
    raise ValueError(f'{root / "val"}: categories {unknown} have no folder in {root / "train"}')
  need = {'train': c['train_per_class'], 'test': c['test_per_class']}
  short = []
  for name in classes:
    for s, folder in (('train', 'train/'), ('test', 'val/')):
      have = len(pools[s].get(name, []))
      if have < need[s]:
        short.append(f'{name} ({have} in {folder}, need {need[s]})')
  if short:
    raise ValueError(f'fmow at {root}: too few _rgb.jpg images for the balanced subset: {", ".join(short)}')
  splits = []
  for s in ('train', 'test'):
    items = []
    for label, name in enumerate(classes):
      (chosen,) = draw(pools[s][name], (need[s],), c['seed'], 'fmow', s, name)
      items += [(p, label, _box(p)) for p in chosen]
    splits.append(files.file_split('fmow', classes, items))
  return tuple(splits)


def _scan(split_dir: pathlib.Path) -> dict[str, list[str]]:
  """category -> sorted paths of its pan-sharpened images (<instance>/<...>_rgb.jpg)."""
  files.directory(split_dir, '<category>/<category>_<n>/<category>_<n>_<k>_rgb.jpg (the fMoW-rgb layout)')
  pools = {}
  for name in files.subdirs(split_dir):
    if name == NOT_A_CLASS:
      continue
    paths = []
    for instance in files.subdirs(split_dir / name):
      folder = split_dir / name / instance
      paths += [str(folder / e.name) for e in os.scandir(folder) if e.name.endswith('_rgb.jpg')]
    pools[name] = sorted(paths)
  return pools


def _box(image_path: str) -> tuple[int, int, int, int]:
  """The first bounding box of an fMoW image's JSON, [x, y, w, h] -> (x0, y0, x1, y1) covering it."""
  path = image_path[:-len('.jpg')] + '.json'
  meta = files.read_json(path, 'the fMoW metadata JSON beside each _rgb.jpg')
  try:
    boxes = meta['bounding_boxes']
    x, y, w, h = (boxes if isinstance(boxes, list) else [boxes])[0]['box']
    valid = all(isinstance(v, (int, float)) for v in (x, y, w, h)) and w > 0 and h > 0
  except (TypeError, KeyError, IndexError, ValueError):
    valid = False
  if not valid:
    got = meta.get('bounding_boxes') if isinstance(meta, dict) else meta
    raise ValueError(f'{path}: expected "bounding_boxes": [{{"box": [x, y, w, h], ...}}] with w, h > 0, got {got!r}')
  return math.floor(x), math.floor(y), math.ceil(x + w), math.ceil(y + h)
