"""Readers: a table of examples, read by key; a split holds keys into it.

`FileReader` reads image files (optionally cropped, and with label PNGs for segmentation),
`ArrayReader` images held in memory (IDX files), `TfdsReader` records of an array_record tfds
split, read without TensorFlow. Images are opened with PIL and converted to RGB as
torchvision's loader does (no EXIF rotation). Errors name the file and what was expected.
"""
import dataclasses
import functools
import io
import os
import pathlib

import numpy as np
from PIL import Image


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
    image = decode(path, path, None if self.boxes is None else self.boxes[k])
    if self.trim_bottom:
      if image.shape[0] <= self.trim_bottom:
        raise ValueError(f'{path}: image is {image.shape[0]} rows high, expected more than the '
                         f'{self.trim_bottom}-row banner to remove')
      image = image[:-self.trim_bottom]
    return image

  def read_annotation(self, k: int) -> np.ndarray:
    return decode_annotation(self.annotations[k], self.annotations[k], self.num_classes)

  def describe(self) -> dict:
    out = {'reader': 'file', 'trim_bottom': self.trim_bottom}
    return out if self.annotations is None else out | {'num_classes': self.num_classes}

  def identify(self, keys):
    for k in keys:
      item = [*stat(self.paths[k]), None if self.boxes is None else self.boxes[k]]
      yield item if self.annotations is None else item + stat(self.annotations[k])


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayReader:
  """Grayscale images held in memory (N, H, W) uint8, read from `files`."""
  images: np.ndarray
  files: tuple[str, ...]

  def read(self, k: int) -> np.ndarray:
    return np.repeat(self.images[k][:, :, None], 3, axis=-1)

  def describe(self) -> dict:
    return {'reader': 'idx', 'files': [stat(f) for f in self.files]}

  def identify(self, keys):
    return (int(k) for k in keys)


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
    tfds = tfds_module('tfds')
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
    return decode(io.BytesIO(encoded), f'{self.name}/{self.split}[{int(k)}]', None)

  def read_annotation(self, k: int) -> np.ndarray:
    encoded = self.source[int(k)][self.annotation_key]
    return decode_annotation(io.BytesIO(encoded), f'{self.name}/{self.split}[{int(k)}].{self.annotation_key}',
                              self.num_classes)

  def describe(self) -> dict:
    version_dir = pathlib.Path(self.source.dataset_info.data_dir)
    files = [stat(p) for p in sorted(version_dir.iterdir()) if p.is_file()]
    out = {'reader': 'tfds', 'name': self.name, 'split': self.split, 'image_key': self.image_key,
           'files': files}
    return out if self.annotation_key is None else out | {'annotation_key': self.annotation_key,
                                                           'num_classes': self.num_classes}

  def identify(self, keys):
    return (int(k) for k in keys)


def decode(source, name: str, box) -> np.ndarray:
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


def decode_annotation(source, name: str, num_classes: int) -> np.ndarray:
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


def stat(path) -> list:
  try:
    st = os.stat(path)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{path}: file not found while fingerprinting the split') from e
  return [str(path), st.st_size, st.st_mtime_ns]


def tfds_module(kind: str):
  """tensorflow_datasets, which only the tfds-backed kinds need (an extra; it is also slow to import)."""
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(f"data kind {kind!r} reads tfds array_record files and needs the 'data' extra: "
                      f"pip install 'stitchjax[data]' (tensorflow-datasets); {e}") from e
  return tfds
