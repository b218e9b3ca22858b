"""Datasets of the stitching protocol (paper Sec. 4 setup and 5.1, supplementary A.2.1).

    data = load(config.data)               # dict or ConfigDict with `kind` and `root`
    data.classes                           # class names, index = label
    split = data.splits['train']           # also 'val' and 'test'
    split.image(i)                         # uint8 (H, W, 3) RGB, cropped where the dataset says so
    split.labels                           # int32 (N,)
    for images, labels, indices in batches(split, bb.preprocess, 128, seed=0, epoch=e):
      ...                                  # float32 (B, S, S, 3), int32 (B,), int32 (B,)

Splits. `test` is the dataset's own test split (or test pool, see the kinds); `val` is carved
from `train` (stitchjax/data/splits.py). Options common to every kind: `root`, `seed` (0),
`val_fraction` (0.1), `classes` (None: all), `limit_per_class` (None), `skip_corrupt` (False:
unreadable images stop the run with their paths; True: they are dropped and counted in
results.json, stitchjax/data/checks.py).

Class order: the dataset's own label order where it has one (Fashion-MNIST's ids,
FGVC-Aircraft's variants.txt, a tfds ClassLabel), sorted names otherwise.

Kinds, one module each in stitchjax/data/kinds/ with its layout, options and loader:
classification `image_folder`, `tfds`, `fmow`, `inat`, `aircraft`, `fashion_mnist`;
segmentation `ade20k`, `scene_parse150`, `fashion_mnist_seg`. A segmentation example also
has an annotation, `split.annotation(i)`: uint8 (H, W) of the image's size, 0 = ignored,
k = pixel class k - 1 of `Dataset.classes` (ADE20K's "reduce_zero_label" convention). Its
image-level `labels` only group examples for `val_fraction` / `limit_per_class`.

A kind is a module with `OPTIONS` (its options and their defaults), `load(options) ->
(train, test)` and, for segmentation, `PIXEL_CLASSES`; add one to KINDS below.
"""
import dataclasses

from stitchjax.data import splits as splits_lib
from stitchjax.data.batching import batch_indices, batches
from stitchjax.data.checks import check_images
from stitchjax.data.kinds import (ade20k, aircraft, fashion_mnist, fashion_mnist_seg, fmow, image_folder, inat,
                                  scene_parse150, tfds)
from stitchjax.data.readers import ArrayReader, FileReader, TfdsReader
from stitchjax.data.splits import Split, is_int

KINDS = {'image_folder': image_folder, 'tfds': tfds, 'fmow': fmow, 'inat': inat, 'aircraft': aircraft,
         'fashion_mnist': fashion_mnist, 'ade20k': ade20k, 'scene_parse150': scene_parse150,
         'fashion_mnist_seg': fashion_mnist_seg}
# Segmentation kinds -> their pixel classes (index = annotation value - 1).
PIXEL_CLASSES = {name: kind.PIXEL_CLASSES for name, kind in KINDS.items() if hasattr(kind, 'PIXEL_CLASSES')}
FASHION_MNIST_ROOT, FASHION_MNIST_CLASSES = fashion_mnist.FASHION_MNIST_ROOT, fashion_mnist.FASHION_MNIST_CLASSES
_COMMON = {'kind': None, 'root': None, 'seed': 0, 'val_fraction': 0.1, 'classes': None, 'limit_per_class': None,
           'skip_corrupt': False}


def task_of(kind: str) -> str:
  """The task a dataset kind's labels serve: 'segmentation' for the kinds with pixel classes."""
  return 'segmentation' if kind in PIXEL_CLASSES else 'classification'


@dataclasses.dataclass(frozen=True)
class Dataset:
  kind: str
  classes: list[str]  # the labels' classes: image classes, or for segmentation kinds the pixel classes
  splits: dict[str, Split]  # 'train', 'val', 'test'

  @property
  def task(self) -> str:
    return task_of(self.kind)


def load(config) -> Dataset:
  """The train/val/test splits that `config` (a dict or ConfigDict, see the module docstring) names."""
  c = load_options(config)
  train, test = KINDS[c['kind']].load(c)
  if c['classes'] is not None:
    kept = splits_lib.class_indices(train.classes, c['classes'])
    train, test = splits_lib.keep_classes(train, kept), splits_lib.keep_classes(test, kept)
  train, val = splits_lib.carve_val(train, c['val_fraction'], c['seed'])
  splits = {'train': train, 'val': val, 'test': test}
  if c['limit_per_class'] is not None:
    splits = {name: splits_lib.limit(s, c['limit_per_class'], c['seed'], name) for name, s in splits.items()}
  return Dataset(kind=c['kind'], classes=list(PIXEL_CLASSES.get(c['kind'], train.classes)), splits=splits)


def load_options(config) -> dict:
  """Config -> dict with every option of its kind, defaults filled in; unknown or bad values raise."""
  given = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
  kind = given.get('kind')
  if kind not in KINDS:
    classification = sorted(set(KINDS) - set(PIXEL_CLASSES))
    raise ValueError(f'data.kind={kind!r} is not one of {classification} (classification) or '
                     f'{sorted(PIXEL_CLASSES)} (segmentation)')
  c = {**_COMMON, **KINDS[kind].OPTIONS}
  unknown = sorted(set(given) - set(c))
  if unknown:
    raise ValueError(f'data: unknown options {unknown} for kind={kind!r}; known: {sorted(c)}')
  c.update({k: v for k, v in given.items() if v is not None})  # None: the default
  missing = [k for k in ('root', 'name') if k in c and c[k] is None]
  if missing:
    raise ValueError(f'data: kind={kind!r} needs {missing}')
  if not is_int(c['seed']) or c['seed'] < 0:
    raise ValueError(f'data.seed={c["seed"]!r} must be an int >= 0')
  fraction = c['val_fraction']
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
    raise ValueError(f'data.val_fraction={fraction!r} must be in [0, 1)')
  if c['classes'] is not None and (isinstance(c['classes'], (str, bytes)) or not hasattr(c['classes'], '__len__')
                                   or not c['classes']):
    raise ValueError(f'data.classes={c["classes"]!r} must be a non-empty list of class names or indices')
  for name in ('limit_per_class', 'train_per_class', 'test_per_class'):
    if c.get(name) is not None and (not is_int(c[name]) or c[name] < 1):
      raise ValueError(f'data.{name}={c[name]!r} must be a positive int')
  return c


__all__ = ['ArrayReader', 'Dataset', 'FileReader', 'KINDS', 'PIXEL_CLASSES', 'Split', 'TfdsReader', 'batch_indices', 'batches',
           'check_images', 'load', 'load_options']
