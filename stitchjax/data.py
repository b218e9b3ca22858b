"""Classification datasets of the stitching protocol (paper Sec. 4 setup and 5.1, supplementary A.2.1).

    data = load(config.data)               # dict or ConfigDict with `kind` and `root`
    data.classes                           # class names, index = label
    split = data.splits['train']           # also 'val' and 'test'
    split.image(i)                         # uint8 (H, W, 3) RGB, cropped where the dataset says so
    split.labels                           # int32 (N,)
    for images, labels, indices in batches(split, bb.preprocess, 128, shuffle=True, seed=0, epoch=e):
      ...                                  # float32 (B, S, S, 3), int32 (B,), int32 (B,)

Splits. `test` is the dataset's own test split (or test pool, see the kinds).
`val` is carved from `train`, so the two are disjoint: in every class c with
n_c train examples, round(val_fraction * n_c) examples (halves round up; at
most n_c - 1, so a class never leaves train) go to val, drawn with the seed.
`val_fraction` defaults to 0.1, `seed` to 0. `classes` (optional, every kind)
keeps only the listed classes, given as names or as indices into the
dataset's class order, and relabels them 0..k-1 in the order given: e.g.
fashion_mnist with classes=(5, 6, 7, 8, 9) or ('Sandal', 'Shirt', ...) is a
5-way task with Sandal = 0. It applies before val is carved, so val is a
fraction of the kept classes. `limit_per_class` (optional)
then keeps at most that many examples per class in each split, again seeded.
`skip_corrupt` (default False) is read by the stitching runner: `check_images`
decodes every image once before any compute; unreadable ones stop the run with
their paths, or with skip_corrupt=True are dropped and counted in results.json.
Every random draw is a permutation of the class's examples by a generator
keyed by (seed, purpose, class name), so adding or dropping one class never
changes what another class draws. A split lists its examples in the pool's
own order (class folders and file names sorted, record order for tfds and
IDX), never in draw order, so the same set of examples is the same split.

Class order: the dataset's own label order where it has one (Fashion-MNIST's
ids, FGVC-Aircraft's variants.txt, a tfds ClassLabel), sorted names otherwise.

Kinds (`kind`: layout under `root`; options with defaults):

* image_folder: root/{train,test}/<class>/**/*.{jpg,jpeg,png,bmp,gif,webp,tif,tiff}.
  Classes are train's subfolders; a test class unknown to train is an error.
* tfds: tfds.data_source(name, split, data_dir=root) over array_record files;
  name (required), train_split='train', test_split='test', image_key='image',
  label_key='label'. Images come as encoded bytes (tfds SkipDecoding) and are
  decoded with PIL here, so no TensorFlow is needed; classes are the
  ClassLabel names.
* fmow: the fMoW-rgb release, root/{train,val}/<category>/<category>_<n>/
  <category>_<n>_<k>_rgb.jpg with <...>_rgb.json beside each image. The
  pan-sharpened `_rgb.jpg` images are used (not `_msrgb.jpg`); the
  `false_detection` folder, if present, is not a class (62 classes). The
  paper's class-balanced subset: train_per_class=230 drawn from train/ and
  test_per_class=26 drawn from val/, fMoW's labelled held-out split (the
  paper does not say which pool; test/ shipped without labels). Each image is cropped to the first
  of its JSON's `bounding_boxes` ([x, y, w, h] pixels) with no added context:
  the paper does not say it pads, and fMoW baselines that do use different
  amounts. A class short of images is an error that names it and its count.
* inat: iNaturalist 2021, root/train.json and root/val.json (COCO style:
  images, annotations, categories with taxonomy fields such as `family`),
  image paths are root/<file_name>. families=('Sphingidae', 'Pieridae',
  'Pyralidae'), train_per_class=200, test_per_class=50, test_from='train'.
  Val 2021 has only 10 images per species, so by default both the train and
  the test images are drawn, disjointly, from train.json; test_from='val'
  draws the test images from val.json instead (then test_per_class <= 10).
  Species short of images are dropped with a warning that lists them (we
  take this to be how the paper arrives at 106 species). Classes are the
  species' scientific names (`name`).
* aircraft: FGVC-Aircraft 2013b, root/data/{variants.txt,
  images_variant_trainval.txt, images_variant_test.txt, images/<id>.jpg};
  the official variant-level trainval / test split. The release has 100
  variants (the paper says 102). The bottom 20 rows of every image are a
  copyright banner, which the dataset's README says to remove; they are.
  Images are not cropped to images_box.txt, as in the usual protocol.
* fashion_mnist: the four IDX files {train,t10k}-{images-idx3,labels-idx1}-ubyte
  (optionally .gz) in root, by default /usr/share/datasets/fashion-mnist
  (Debian package dataset-fashion-mnist). 28x28 grayscale, repeated to RGB.

Segmentation kinds (paper 5.1, A.2.4). Each example also has an annotation,
`split.annotation(i)`: uint8 (H, W) of the image's size, 0 = ignored, k = pixel
class k - 1 of `Dataset.classes` (ADE20K's "reduce_zero_label" convention). The
image-level `labels` only group examples for `val_fraction`/`limit_per_class`
(and `classes` for fashion_mnist_seg); `Dataset.classes` are the pixel classes.

* ade20k: the official ADEChallengeData2016 release, root/images/{training,
  validation}/<id>.jpg and root/annotations/{training,validation}/<id>.png
  (mode L, values 0..150). training -> train (val is carved from it),
  validation (2,000 images, the labelled held-out split) -> test. Every image
  and every annotation must have its partner of the same stem. All images are
  one group ('scene'), so limit_per_class limits images per split.
* scene_parse150: the same data prepared as the tfds dataset scene_parse150
  (array_record, read without TensorFlow like `tfds`); name='scene_parse150',
  train_split='train', test_split='test', image_key='image',
  annotation_key='annotation'.
* fashion_mnist_seg: a small real-image segmentation task for the demo, the
  Fashion-MNIST images of `fashion_mnist` with per-pixel labels: pixels >=
  foreground=48 are the garment (annotation 2 + its Fashion-MNIST class id),
  pixels <= background=8 are background (annotation 1), pixels in between
  (soft edges) are ignored (0). Pixel classes: background and the ten garments,
  whatever `classes` keeps (a fixed label space, like ADE20K's 150); the
  image-level labels are the garment classes, so `classes` and
  `limit_per_class` work as for fashion_mnist.

Images are opened with PIL and converted to RGB as torchvision's loader does
(no EXIF rotation). Errors name the file and what was expected.

`Split.fingerprint` (a feature-cache key) is the sha256 of the split's
content: kind, class names, labels, and per example its resolved file path,
size, mtime and crop box (file kinds), or its record index plus the size and
mtime of every data file (tfds, IDX), and the banner trim. The seed enters
only through what it selects, so two seeds that select the same examples share
cached features.
"""
import dataclasses
import functools
import gzip
import hashlib
import io
import json
import math
import os
import pathlib
import warnings
import zlib

from absl import flags
import grain
import numpy as np
from PIL import Image

from stitchjax import distributed

FASHION_MNIST_ROOT = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                         'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')
# ADE20K's 150 pixel classes in annotation order (value k = class k - 1), short names as in mmseg.
ADE20K_CLASSES = (
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
# Segmentation kinds -> their pixel classes (index = annotation value - 1).
PIXEL_CLASSES = {'ade20k': ADE20K_CLASSES, 'scene_parse150': ADE20K_CLASSES,
                 'fashion_mnist_seg': ('background',) + FASHION_MNIST_CLASSES}
AIRCRAFT_BANNER = 20  # rows of copyright banner at the bottom of each FGVC-Aircraft image
FMOW_NOT_A_CLASS = 'false_detection'

_COMMON = {'kind': None, 'root': None, 'seed': 0, 'val_fraction': 0.1, 'classes': None, 'limit_per_class': None,
           'skip_corrupt': False}
_OPTIONS = {
    'image_folder': {},
    'tfds': {'name': None, 'train_split': 'train', 'test_split': 'test', 'image_key': 'image',
             'label_key': 'label'},
    'fmow': {'train_per_class': 230, 'test_per_class': 26},
    'inat': {'families': ('Sphingidae', 'Pieridae', 'Pyralidae'), 'train_per_class': 200,
             'test_per_class': 50, 'test_from': 'train'},
    'aircraft': {},
    'fashion_mnist': {'root': FASHION_MNIST_ROOT},
    'ade20k': {},
    'scene_parse150': {'name': 'scene_parse150', 'train_split': 'train', 'test_split': 'test', 'image_key': 'image',
                       'annotation_key': 'annotation'},
    'fashion_mnist_seg': {'root': FASHION_MNIST_ROOT, 'foreground': 48, 'background': 8},
}


# ---------------------------------------------------------------------------------------------
# Readers: a table of examples; a split holds indices into it.


@dataclasses.dataclass(frozen=True, eq=False)
class FileReader:
  """Image files, each optionally cropped to a box; `trim_bottom` rows cut off every image.
  Segmentation: `annotations[k]` is image k's label PNG (uncropped, values 0..num_classes)."""
  paths: tuple[str, ...]
  boxes: tuple[tuple[int, int, int, int], ...] | None = None  # (x0, y0, x1, y1), end-exclusive
  trim_bottom: int = 0
  annotations: tuple[str, ...] | None = None
  num_classes: int = 0

  def read(self, k: int) -> np.ndarray:
    path = self.paths[k]
    image = _decode(path, path, None if self.boxes is None else self.boxes[k])
    if self.trim_bottom:
      if image.shape[0] <= self.trim_bottom:
        raise ValueError(f'{path}: image is {image.shape[0]} rows high, expected more than the '
                         f'{self.trim_bottom}-row banner to remove')
      image = image[:-self.trim_bottom]
    return image

  def read_annotation(self, k: int) -> np.ndarray:
    return _decode_annotation(self.annotations[k], self.annotations[k], self.num_classes)

  def describe(self) -> dict:
    out = {'reader': 'file', 'trim_bottom': self.trim_bottom}
    return out if self.annotations is None else out | {'num_classes': self.num_classes}

  def identify(self, keys):
    for k in keys:
      item = [*_stat(self.paths[k]), None if self.boxes is None else self.boxes[k]]
      yield item if self.annotations is None else item + _stat(self.annotations[k])


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayReader:
  """Grayscale images held in memory (N, H, W) uint8, read from `files`."""
  images: np.ndarray
  files: tuple[str, ...]

  def read(self, k: int) -> np.ndarray:
    return np.repeat(self.images[k][:, :, None], 3, axis=-1)

  def describe(self) -> dict:
    return {'reader': 'idx', 'files': [_stat(f) for f in self.files]}

  def identify(self, keys):
    return (int(k) for k in keys)


@dataclasses.dataclass(frozen=True, eq=False)
class FashionSegReader(ArrayReader):
  """Fashion-MNIST images whose annotation is derived from the image and its class (see fashion_mnist_seg)."""
  classes: np.ndarray  # (N,) Fashion-MNIST class id of each record
  foreground: int
  background: int

  def read_annotation(self, k: int) -> np.ndarray:
    pixels = self.images[k]
    garment = np.uint8(2 + self.classes[k])
    return np.where(pixels >= self.foreground, garment, np.where(pixels <= self.background, 1, 0)).astype(np.uint8)

  def describe(self) -> dict:
    return super().describe() | {'reader': 'idx_seg', 'foreground': self.foreground, 'background': self.background}


@dataclasses.dataclass(frozen=True, eq=False)
class TfdsReader:
  """Records of an array_record tfds split; images come as encoded bytes and PIL decodes them."""
  name: str
  split: str
  data_dir: str
  image_key: str
  annotation_key: str | None = None  # segmentation: an Image feature of label maps
  num_classes: int = 0

  @functools.cached_property
  def source(self):
    tfds = _tfds_module('tfds')
    encoded = [k for k in (self.image_key, self.annotation_key) if k is not None]
    try:
      return tfds.data_source(self.name, split=self.split, data_dir=self.data_dir,
                              decoders={k: tfds.decode.SkipDecoding() for k in encoded})
    except Exception as e:  # tfds raises many types; say what was expected where
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise ValueError(f'tfds.data_source({self.name!r}, split={self.split!r}, data_dir={self.data_dir!r}) '
                       f'failed: {first}. Expected {self.data_dir}/{self.name}/<version>/ holding '
                       'dataset_info.json and array_record files') from e

  def __getstate__(self):
    state = dict(self.__dict__)
    state.pop('source', None)  # reopened lazily in a worker process
    return state

  def read(self, k: int) -> np.ndarray:
    encoded = self.source[int(k)][self.image_key]
    return _decode(io.BytesIO(encoded), f'{self.name}/{self.split}[{int(k)}]', None)

  def read_annotation(self, k: int) -> np.ndarray:
    encoded = self.source[int(k)][self.annotation_key]
    return _decode_annotation(io.BytesIO(encoded), f'{self.name}/{self.split}[{int(k)}].{self.annotation_key}',
                              self.num_classes)

  def describe(self) -> dict:
    version_dir = pathlib.Path(self.source.dataset_info.data_dir)
    files = [_stat(p) for p in sorted(version_dir.iterdir()) if p.is_file()]
    out = {'reader': 'tfds', 'name': self.name, 'split': self.split, 'image_key': self.image_key,
           'files': files}
    return out if self.annotation_key is None else out | {'annotation_key': self.annotation_key,
                                                           'num_classes': self.num_classes}

  def identify(self, keys):
    return (int(k) for k in keys)


def _decode(source, name: str, box) -> np.ndarray:
  """uint8 (H, W, 3) of an encoded image (a path or a file object), cropped to box=(x0, y0, x1, y1)."""
  try:
    image = Image.open(source)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{name}: image file not found') from e
  except _UNDECODABLE as e:
    raise _undecodable(name, e) from e
  with image:
    if box is not None:
      width, height = image.size
      clipped = (max(box[0], 0), max(box[1], 0), min(box[2], width), min(box[3], height))
      if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise ValueError(f'{name}: crop box {box} (x0, y0, x1, y1) lies outside the {width}x{height} image')
      box = clipped
    try:  # PIL decodes lazily: corrupt data shows up here
      return np.asarray((image if box is None else image.crop(box)).convert('RGB'))
    except _UNDECODABLE as e:
      raise _undecodable(name, e) from e


_UNDECODABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _decode_annotation(source, name: str, num_classes: int) -> np.ndarray:
  """uint8 (H, W) label map of an encoded single-channel PNG (mode L, or P read as its indices)."""
  try:
    with Image.open(source) as image:
      mode = image.mode
      labels = np.asarray(image) if mode in ('L', 'P') else None
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{name}: annotation file not found') from e
  except _UNDECODABLE as e:
    raise ValueError(f'{name}: cannot decode annotation ({e}); expected a single-channel PNG') from e
  if labels is None:
    raise ValueError(f'{name}: annotation has PIL mode {mode!r}, expected a single-channel (L or P) PNG of '
                     'class indices (a colour-coded RGB map is not a label map)')
  if labels.max(initial=0) > num_classes:
    raise ValueError(f'{name}: annotation value {labels.max()} exceeds the {num_classes} classes '
                     f'(expected 0 = ignored, 1..{num_classes})')
  return labels


def _undecodable(name, e) -> ValueError:
  hint = ''
  if isinstance(e, Image.DecompressionBombError):  # PIL's guard, a process-wide setting we leave to the caller
    hint = '; if the file is trusted, raise PIL.Image.MAX_IMAGE_PIXELS before loading'
  return ValueError(f'{name}: cannot decode image ({e}); expected a readable JPEG/PNG/... image{hint}')


def _stat(path) -> list:
  try:
    st = os.stat(path)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{path}: file not found while fingerprinting the split') from e
  return [str(path), st.st_size, st.st_mtime_ns]


# ---------------------------------------------------------------------------------------------
# Splits and datasets.


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """N examples: `keys` (N,) index `reader`'s table, `labels` int32 (N,) index `classes`."""
  kind: str
  classes: tuple[str, ...]
  reader: FileReader | ArrayReader | TfdsReader
  keys: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    for name, value in (('keys', np.asarray(self.keys, np.int64)), ('labels', np.asarray(self.labels, np.int32))):
      value = value.copy()
      value.flags.writeable = False
      object.__setattr__(self, name, value)

  def __len__(self) -> int:
    return len(self.keys)

  def image(self, i: int) -> np.ndarray:
    """uint8 (H, W, 3) RGB of example i."""
    return self.reader.read(self.keys[i])

  def annotation(self, i: int) -> np.ndarray:
    """Segmentation kinds: uint8 (H, W) label map of example i (0 ignored, k = pixel class k - 1)."""
    return self.reader.read_annotation(self.keys[i])

  def subset(self, indices) -> 'Split':
    indices = np.asarray(indices, np.int64)
    return dataclasses.replace(self, keys=self.keys[indices], labels=self.labels[indices])

  @functools.cached_property
  def fingerprint(self) -> str:
    """sha256 hex of the split's content, see the module docstring."""
    h = hashlib.sha256()
    header = {'kind': self.kind, 'classes': list(self.classes), 'reader': self.reader.describe(),
              'labels': self.labels.tolist()}
    h.update(json.dumps(header, sort_keys=True).encode())
    for item in self.reader.identify(self.keys):
      h.update(json.dumps(item).encode())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class Dataset:
  kind: str
  classes: list[str]  # the labels' classes: image classes, or for segmentation kinds the pixel classes
  splits: dict[str, Split]  # 'train', 'val', 'test'

  @property
  def task(self) -> str:
    return 'segmentation' if self.kind in PIXEL_CLASSES else 'classification'


def load(config) -> Dataset:
  """The train/val/test splits that `config` (a dict or ConfigDict, see the module docstring) names."""
  c = load_options(config)
  train, test = _LOADERS[c['kind']](c)
  if c['classes'] is not None:
    kept = _class_indices(train.classes, c['classes'])
    train, test = _keep_classes(train, kept), _keep_classes(test, kept)
  train, val = _carve_val(train, c['val_fraction'], c['seed'])
  splits = {'train': train, 'val': val, 'test': test}
  if c['limit_per_class'] is not None:
    splits = {name: _limit(s, c['limit_per_class'], c['seed'], name) for name, s in splits.items()}
  return Dataset(kind=c['kind'], classes=list(PIXEL_CLASSES.get(c['kind'], train.classes)), splits=splits)


def load_options(config) -> dict:
  """Config -> dict with every option of its kind, defaults filled in; unknown or bad values raise."""
  given = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
  kind = given.get('kind')
  if kind not in _OPTIONS:
    classification = sorted(set(_OPTIONS) - set(PIXEL_CLASSES))
    raise ValueError(f'data.kind={kind!r} is not one of {classification} (classification) or '
                     f'{sorted(PIXEL_CLASSES)} (segmentation)')
  c = {**_COMMON, **_OPTIONS[kind]}
  unknown = sorted(set(given) - set(c))
  if unknown:
    raise ValueError(f'data: unknown options {unknown} for kind={kind!r}; known: {sorted(c)}')
  c.update({k: v for k, v in given.items() if v is not None})  # None: the default
  missing = [k for k in ('root', 'name') if k in c and c[k] is None]
  if missing:
    raise ValueError(f'data: kind={kind!r} needs {missing}')
  if not _is_int(c['seed']) or c['seed'] < 0:
    raise ValueError(f'data.seed={c["seed"]!r} must be an int >= 0')
  fraction = c['val_fraction']
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
    raise ValueError(f'data.val_fraction={fraction!r} must be in [0, 1)')
  if c['classes'] is not None and (isinstance(c['classes'], (str, bytes)) or not hasattr(c['classes'], '__len__')
                                   or not c['classes']):
    raise ValueError(f'data.classes={c["classes"]!r} must be a non-empty list of class names or indices')
  for name in ('limit_per_class', 'train_per_class', 'test_per_class'):
    if c.get(name) is not None and (not _is_int(c[name]) or c[name] < 1):
      raise ValueError(f'data.{name}={c[name]!r} must be a positive int')
  return c


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _class_indices(classes: tuple[str, ...], wanted) -> list[int]:
  """data.classes (names or indices of `classes`, mixed if need be) -> indices, in the order given."""
  indices = []
  for w in wanted:
    if _is_int(w) and 0 <= w < len(classes):
      indices.append(int(w))
    elif isinstance(w, str) and w in classes:
      indices.append(classes.index(w))
    else:
      raise ValueError(f'data.classes: {w!r} is neither a class name nor an index in 0..{len(classes) - 1}; '
                       f'classes are {list(classes)}')
  repeated = sorted({classes[i] for i in indices if indices.count(i) > 1})
  if repeated:
    raise ValueError(f'data.classes={list(wanted)!r} names {repeated} more than once')
  return indices


def _keep_classes(split: Split, kept: list[int]) -> Split:
  """The examples of classes `kept` (indices into split.classes), relabelled 0..k-1 in that order."""
  relabel = np.full(len(split.classes), -1, np.int32)
  relabel[kept] = np.arange(len(kept))
  sub = split.subset(np.flatnonzero(relabel[split.labels] >= 0))  # pool order is kept
  return dataclasses.replace(sub, classes=tuple(split.classes[i] for i in kept), labels=relabel[sub.labels])


# ---------------------------------------------------------------------------------------------
# Seeded selection.


def _permutation(n: int, seed: int, *words: str) -> np.ndarray:
  """A permutation of range(n) drawn by a generator keyed by the seed and `words`."""
  key = [seed] + [zlib.crc32(w.encode()) for w in words]
  return np.random.default_rng(key).permutation(n)


def _by_class(split: Split):
  for c, name in enumerate(split.classes):
    yield name, np.flatnonzero(split.labels == c)


def _carve_val(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
  val = []
  for name, positions in _by_class(train):
    n_val = min(math.floor(fraction * len(positions) + 0.5), max(len(positions) - 1, 0))
    val.extend(positions[_permutation(len(positions), seed, 'val', name)[:n_val]])
  is_val = np.zeros(len(train), bool)
  is_val[val] = True
  return train.subset(np.flatnonzero(~is_val)), train.subset(np.flatnonzero(is_val))


def _limit(split: Split, limit: int, seed: int, split_name: str) -> Split:
  keep = []
  for name, positions in _by_class(split):
    keep.extend(positions[_permutation(len(positions), seed, 'limit', split_name, name)[:limit]])
  return split.subset(np.sort(np.asarray(keep, np.int64)))


def _draw(pool: list, counts: tuple[int, ...], seed: int, *words: str) -> list[list]:
  """Disjoint seeded draws of counts[0], counts[1], ... items of `pool`, each in pool order."""
  order = _permutation(len(pool), seed, *words)
  draws, start = [], 0
  for n in counts:
    draws.append([pool[i] for i in sorted(order[start:start + n])])
    start += n
  return draws


# ---------------------------------------------------------------------------------------------
# Kinds.


def _root(c) -> pathlib.Path:
  root = pathlib.Path(c['root']).expanduser().resolve()
  if not root.is_dir():
    raise FileNotFoundError(f'data.root={str(c["root"])!r}: no such directory (expected the {c["kind"]} '
                            'dataset there, see stitchjax/data.py)')
  return root


def _dir(path: pathlib.Path, expected: str) -> pathlib.Path:
  if not path.is_dir():
    raise FileNotFoundError(f'{path}: no such directory, expected {expected}')
  return path


def _subdirs(path: pathlib.Path) -> list[str]:
  return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith('.'))


def _file_split(kind, classes, items, **reader_args) -> Split:
  """items: (path, label) or (path, label, box) in pool order."""
  paths = tuple(str(item[0]) for item in items)
  boxes = tuple(item[2] for item in items) if items and len(items[0]) == 3 else None
  reader = FileReader(paths, boxes, **reader_args)
  return Split(kind, tuple(classes), reader, np.arange(len(items)), [item[1] for item in items])


def _image_folder(c) -> tuple[Split, Split]:
  root = _root(c)
  train_dir = _dir(root / 'train', 'train/<class>/ folders of images')
  test_dir = _dir(root / 'test', 'test/<class>/ folders of images')
  classes = _subdirs(train_dir)
  if not classes:
    raise ValueError(f'{train_dir}: no class folders, expected train/<class>/<image>')
  unknown = sorted(set(_subdirs(test_dir)) - set(classes))
  if unknown:
    raise ValueError(f'{test_dir}: classes {unknown} have no folder in {train_dir}')

  def scan(split_dir, require):
    items = []
    for label, name in enumerate(classes):
      paths = _images_under(split_dir / name)
      if require and not paths:
        raise ValueError(f'{split_dir / name}: no images with extensions {IMAGE_EXTENSIONS}')
      items += [(p, label) for p in paths]
    return _file_split('image_folder', classes, items)

  return scan(train_dir, True), scan(test_dir, False)


def _images_under(folder: pathlib.Path) -> list[pathlib.Path]:
  if not folder.is_dir():
    return []
  return sorted(p for p in folder.rglob('*') if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith('.'))


def _fmow(c) -> tuple[Split, Split]:
  root = _root(c)
  pools = {'train': _fmow_scan(root / 'train'), 'test': _fmow_scan(root / 'val')}
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
      (chosen,) = _draw(pools[s][name], (need[s],), c['seed'], 'fmow', s, name)
      items += [(p, label, _fmow_box(p)) for p in chosen]
    splits.append(_file_split('fmow', classes, items))
  return tuple(splits)


def _fmow_scan(split_dir: pathlib.Path) -> dict[str, list[str]]:
  """category -> sorted paths of its pan-sharpened images (<instance>/<...>_rgb.jpg)."""
  _dir(split_dir, '<category>/<category>_<n>/<category>_<n>_<k>_rgb.jpg (the fMoW-rgb layout)')
  pools = {}
  for name in _subdirs(split_dir):
    if name == FMOW_NOT_A_CLASS:
      continue
    paths = []
    for instance in _subdirs(split_dir / name):
      folder = split_dir / name / instance
      paths += [str(folder / e.name) for e in os.scandir(folder) if e.name.endswith('_rgb.jpg')]
    pools[name] = sorted(paths)
  return pools


def _fmow_box(image_path: str) -> tuple[int, int, int, int]:
  """The first bounding box of an fMoW image's JSON, [x, y, w, h] -> (x0, y0, x1, y1) covering it."""
  path = image_path[:-len('.jpg')] + '.json'
  meta = _read_json(path, 'the fMoW metadata JSON beside each _rgb.jpg')
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


def _read_json(path, expected: str):
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{path}: not found, expected {expected}') from e
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'{path}: malformed JSON ({e}), expected {expected}') from e


def _inat(c) -> tuple[Split, Split]:
  root = _root(c)
  families = (c['families'],) if isinstance(c['families'], str) else tuple(c['families'])
  if c['test_from'] not in ('train', 'val'):
    raise ValueError(f'data.test_from={c["test_from"]!r} must be "train" or "val"')
  categories, train_pool = _inat_annotations(root / 'train.json')
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
    test_pool = _inat_annotations(root / 'val.json')[1]
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
      (train,) = _draw(train_pool[i], (n_train,), c['seed'], 'inat', 'train', name)
      (test,) = _draw(test_pool[i], (n_test,), c['seed'], 'inat', 'test', name)
    else:
      train, test = _draw(train_pool[i], (n_train, n_test), c['seed'], 'inat', name)
    train_items += [(root / f, label[name]) for f in train]
    test_items += [(root / f, label[name]) for f in test]
  return _file_split('inat', classes, train_items), _file_split('inat', classes, test_items)


def _inat_annotations(path: pathlib.Path) -> tuple[dict[int, dict], dict[int, list[str]]]:
  """(category id -> category, category id -> sorted file_names) of an iNat 2021 COCO-style JSON."""
  expected = 'iNaturalist 2021 COCO-style JSON with "images", "annotations" and "categories"'
  data = _read_json(path, expected)
  if not isinstance(data, dict) or any(not isinstance(data.get(k), list)
                                       for k in ('images', 'annotations', 'categories')):
    raise ValueError(f'{path}: expected {expected} lists')
  categories = {_field(cat, 'id', path, 'categories', j): cat for j, cat in enumerate(data['categories'])}
  for j, cat in enumerate(data['categories']):
    _field(cat, 'name', path, 'categories', j)
  files = {_field(im, 'id', path, 'images', j): _field(im, 'file_name', path, 'images', j)
           for j, im in enumerate(data['images'])}
  pools = {}
  for j, ann in enumerate(data['annotations']):
    image_id = _field(ann, 'image_id', path, 'annotations', j)
    category_id = _field(ann, 'category_id', path, 'annotations', j)
    if image_id not in files or category_id not in categories:
      raise ValueError(f'{path}: annotations[{j}] refers to image {image_id} or category {category_id}, '
                       'which is not listed')
    pools.setdefault(category_id, []).append(files[image_id])
  return categories, {k: sorted(v) for k, v in pools.items()}


def _field(record, key, path, table, j):
  if not isinstance(record, dict) or key not in record:
    raise ValueError(f'{path}: {table}[{j}] has no field {key!r}')
  return record[key]


def _aircraft(c) -> tuple[Split, Split]:
  data = _dir(_root(c) / 'data', 'the data/ folder of fgvc-aircraft-2013b')
  classes = _lines(data / 'variants.txt', 'one variant name per line')
  if len(set(classes)) != len(classes):
    raise ValueError(f'{data / "variants.txt"}: duplicate variant names')
  label = {name: k for k, name in enumerate(classes)}
  splits = []
  for list_name in ('images_variant_trainval.txt', 'images_variant_test.txt'):
    items = []
    for n, line in enumerate(_lines(data / list_name, '"<image id> <variant>" lines'), 1):
      image_id, _, variant = line.partition(' ')
      if not image_id or variant not in label:
        raise ValueError(f'{data / list_name}:{n}: {line!r}, expected "<image id> <variant>" with a variant '
                         'from variants.txt')
      items.append((data / 'images' / f'{image_id}.jpg', label[variant]))
    splits.append(_file_split('aircraft', classes, items, trim_bottom=AIRCRAFT_BANNER))
  return tuple(splits)


def _lines(path: pathlib.Path, expected: str) -> list[str]:
  try:
    with open(path) as f:
      return [line.strip() for line in f if line.strip()]
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{path}: not found, expected {expected}') from e


def _fashion_mnist(c) -> tuple[Split, Split]:
  root = pathlib.Path(c['root']).expanduser()
  stems = [f'{p}-{k}' for p in ('train', 't10k') for k in ('images-idx3-ubyte', 'labels-idx1-ubyte')]
  how = (f'expected the four Fashion-MNIST IDX files {stems} (optionally .gz): install them with '
         f'`apt-get install dataset-fashion-mnist` (into {FASHION_MNIST_ROOT}) or point data.root at a '
         'directory holding them')
  if not root.is_dir():
    raise FileNotFoundError(f'data.root={str(root)!r}: no such directory; {how}')
  splits = []
  for prefix in ('train', 't10k'):
    image_file = _idx_file(root, f'{prefix}-images-idx3-ubyte', how)
    label_file = _idx_file(root, f'{prefix}-labels-idx1-ubyte', how)
    images, labels = _read_idx(image_file, 3), _read_idx(label_file, 1)
    if len(images) != len(labels) or (labels.size and labels.max() >= len(FASHION_MNIST_CLASSES)):
      raise ValueError(f'{label_file}: {len(labels)} labels (max {labels.max(initial=0)}) for '
                       f'{len(images)} images in {image_file}, expected one label in 0..9 per image')
    reader = ArrayReader(images, (str(image_file.resolve()), str(label_file.resolve())))
    splits.append(Split('fashion_mnist', FASHION_MNIST_CLASSES, reader, np.arange(len(labels)), labels))
  return tuple(splits)


def _fashion_mnist_seg(c) -> tuple[Split, Split]:
  fg, bg = c['foreground'], c['background']
  if not (_is_int(fg) and _is_int(bg) and 0 <= bg < fg <= 255):
    raise ValueError(f'data.background={bg!r}, data.foreground={fg!r}: expected ints with 0 <= background < '
                     'foreground <= 255')
  out = []
  for s in _fashion_mnist(c):
    reader = FashionSegReader(s.reader.images, s.reader.files, s.labels, fg, bg)
    out.append(dataclasses.replace(s, kind='fashion_mnist_seg', reader=reader))
  return tuple(out)


def _idx_file(root: pathlib.Path, stem: str, how: str) -> pathlib.Path:
  for name in (stem, stem + '.gz'):
    if (root / name).is_file():
      return root / name
  raise FileNotFoundError(f'{root / stem}[.gz]: not found; {how}')


def _read_idx(path: pathlib.Path, ndim: int) -> np.ndarray:
  """An IDX file of unsigned bytes (magic 0x0000 08 <ndim>, big-endian int32 dims, data) -> uint8 array."""
  with (gzip.open if path.suffix == '.gz' else open)(path, 'rb') as f:
    try:
      raw = f.read()
    except (OSError, EOFError) as e:
      raise ValueError(f'{path}: unreadable ({e}), expected an IDX file') from e
  header = 4 + 4 * ndim
  if len(raw) < header or raw[:4] != bytes([0, 0, 8, ndim]):
    raise ValueError(f'{path}: expected an IDX file of unsigned bytes with {ndim} dims '
                     f'(magic 00 00 08 {ndim:02x}), got magic {raw[:4].hex(" ")}')
  shape = tuple(int(d) for d in np.frombuffer(raw[4:header], '>i4'))
  if len(raw) - header != math.prod(shape):
    raise ValueError(f'{path}: header says shape {shape} ({math.prod(shape)} bytes), '
                     f'but {len(raw) - header} data bytes follow')
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _tfds_module(kind: str):
  """tensorflow_datasets, which only the tfds-backed kinds need (an extra; it is also slow to import)."""
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(f"data kind {kind!r} reads tfds array_record files and needs the 'data' extra: "
                      f"pip install 'stitchjax[data]' (tensorflow-datasets); {e}") from e
  return tfds


def _tfds(c) -> tuple[Split, Split]:
  root = _root(c)
  return tuple(_tfds_split(c, root, c[key]) for key in ('train_split', 'test_split'))


def _tfds_split(c, root: pathlib.Path, split: str) -> Split:
  tfds = _tfds_module('tfds')
  reader = TfdsReader(c['name'], split, str(root), c['image_key'])
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


def _ade20k(c) -> tuple[Split, Split]:
  root = _root(c)
  layout = ('the ADEChallengeData2016 layout: images/{training,validation}/*.jpg, '
            'annotations/{training,validation}/*.png')
  splits = []
  for folder in ('training', 'validation'):
    images = _by_stem(_dir(root / 'images' / folder, f'<id>.jpg images ({layout})'), '.jpg')
    annotations = _by_stem(_dir(root / 'annotations' / folder, f'<id>.png label maps ({layout})'), '.png')
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
    reader = FileReader(tuple(images[k] for k in stems), annotations=tuple(annotations[k] for k in stems),
                        num_classes=len(ADE20K_CLASSES))
    splits.append(Split('ade20k', ('scene',), reader, np.arange(len(stems)), np.zeros(len(stems))))
  return tuple(splits)


def _by_stem(folder: pathlib.Path, ext: str) -> dict[str, str]:
  return {e.name[:-len(ext)]: str(folder / e.name) for e in os.scandir(folder)
          if e.name.endswith(ext) and not e.name.startswith('.')}


def _scene_parse150(c) -> tuple[Split, Split]:
  tfds = _tfds_module('scene_parse150')
  root, splits = _root(c), []
  for split in (c['train_split'], c['test_split']):
    reader = TfdsReader(c['name'], split, str(root), c['image_key'], c['annotation_key'], len(ADE20K_CLASSES))
    features = reader.source.dataset_info.features
    for key in (c['image_key'], c['annotation_key']):
      if key not in features or not isinstance(features[key], tfds.features.Image):
        raise ValueError(f'tfds dataset {c["name"]!r} in {reader.source.dataset_info.data_dir}: expected an Image '
                         f'feature {key!r}, features are {list(features)}')
    n = len(reader.source)
    splits.append(Split('scene_parse150', ('scene',), reader, np.arange(n), np.zeros(n)))
  return tuple(splits)


_LOADERS = {'image_folder': _image_folder, 'tfds': _tfds, 'fmow': _fmow, 'inat': _inat,
            'aircraft': _aircraft, 'fashion_mnist': _fashion_mnist, 'ade20k': _ade20k,
            'scene_parse150': _scene_parse150, 'fashion_mnist_seg': _fashion_mnist_seg}


# ---------------------------------------------------------------------------------------------
# Batches.


@dataclasses.dataclass(frozen=True)
class _Example:
  """Index -> (image float32 (S, S, 3), label int32, index int32); picklable for worker processes."""
  split: Split
  preprocess: object

  def __call__(self, i):
    image = np.asarray(self.preprocess([self.split.image(i)])[0], np.float32)
    return image, np.int32(self.split.labels[i]), np.int32(i)


def check_images(split: Split, name: str, skip_corrupt: bool, annotated: bool = False) -> tuple[Split, list[str]]:
  """Decodes every image of `split` once. Unreadable ones are reported with their paths: an error
  naming them all, or, with skip_corrupt, the split without them and their descriptions.
  `annotated` (segmentation kinds): each annotation too, which must have its image's size."""
  bad, errors = [], []
  for i in distributed.progress(range(len(split)), desc=f'checking {name} images', unit='image', leave=False):
    try:
      image = split.image(i)
      if annotated:
        labels = split.annotation(i)
        if labels.shape != image.shape[:2]:
          k = int(split.keys[i])
          where = (split.reader.annotations[k] if isinstance(split.reader, FileReader)
                   else f'{split.kind} record {k}')
          raise ValueError(f'{where}: annotation is {labels.shape[1]}x{labels.shape[0]} (WxH) but its image is '
                           f'{image.shape[1]}x{image.shape[0]}; image and annotation pairs must match')
    except (OSError, ValueError) as e:
      bad.append(i)
      errors.append(str(e))
  if errors and not skip_corrupt:
    shown = '\n  '.join(errors[:20]) + (f'\n  and {len(errors) - 20} more' if len(errors) > 20 else '')
    raise ValueError(f'{len(errors)} unreadable image(s) in the {name} split:\n  {shown}\n'
                     'Fix or remove them, or set --config.data.skip_corrupt=True to skip them (they are then '
                     'counted in results.json)')
  return split.subset(np.setdiff1d(np.arange(len(split)), bad)), errors


def batches(split: Split, preprocess, batch_size: int, *, shuffle: bool, seed: int, epoch: int = 0,
            drop_remainder: bool = False, num_workers: int = 0):
  """Iterator of (images float32 (B, S, S, 3), labels int32 (B,), indices int32 (B,)) over `split`.

  A grain pipeline: indices (shuffled per (seed, epoch) when `shuffle`), then
  read + `preprocess` (a callable list of uint8 (H, W, 3) -> float32 (B, S, S, 3),
  called per image, so each backbone gets its own preprocessing of the same
  images), then batching. Deterministic: threads and `num_workers` worker
  processes preserve order. `indices` are positions in `split`.
  """
  if not _is_int(batch_size) or batch_size < 1:
    raise ValueError(f'batches: batch_size={batch_size!r} must be a positive int')
  ds = grain.MapDataset.range(len(split))
  if shuffle:
    ds = ds.shuffle(seed=int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
  # Prefetch at most two batches of images: preprocessed images are large (336 px: 1.3 MB each).
  # More reader threads than cores only adds polling overhead.
  options = grain.ReadOptions(num_threads=min(16, os.cpu_count() or 1, batch_size), prefetch_buffer_size=2 * batch_size)
  it = ds.map(_Example(split, preprocess)).to_iter_dataset(options)
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain's workers read its absl flags; outside an absl app, take their defaults as absl.app would.
      flags.FLAGS.mark_as_parsed()
    # Workers take strided slices of the examples and grain interleaves them back in order; batching
    # after that makes batches independent of the number of workers.
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(it.batch(batch_size, drop_remainder=drop_remainder, batch_fn=_stack))


def _stack(examples):
  """[(image, label, index)] -> ((B, S, S, 3), (B,), (B,)) plain numpy arrays (not shared-memory views)."""
  return tuple(np.stack([np.asarray(e[k]) for e in examples]) for k in range(3))
