"""Splits and their seeded selection.

`val` is carved from `train`, so the two are disjoint: in every class c with n_c train
examples, round(val_fraction * n_c) examples (halves round up; at most n_c - 1, so a class
never leaves train) go to val, drawn with the seed. `classes` keeps only the listed classes,
given as names or as indices into the dataset's class order, and relabels them 0..k-1 in the
order given. `limit_per_class` then keeps at most that many examples per class in each split.

Every random draw is a permutation of the class's examples by a generator keyed by (seed,
purpose, class name), so adding or dropping one class never changes what another class draws.
A split lists its examples in the pool's own order (class folders and file names sorted,
record order for tfds and IDX), never in draw order, so the same set of examples is the same split.

`Split.fingerprint` (a feature-cache key) is the sha256 of the split's content: kind, class
names, labels, and per example its resolved file path, size, mtime and crop box (file kinds),
or its record index plus the size and mtime of every data file (tfds, IDX), and the banner
trim. The seed enters only through what it selects, so two seeds that select the same
examples share cached features.
"""
import dataclasses
import functools
import hashlib
import json
import math
import zlib

import numpy as np

from stitchjax.data import readers


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """N examples: `keys` (N,) index `reader`'s table, `labels` int32 (N,) index `classes`."""
  kind: str
  classes: tuple[str, ...]
  reader: readers.FileReader | readers.ArrayReader | readers.TfdsReader
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


def is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def class_indices(classes: tuple[str, ...], wanted) -> list[int]:
  """data.classes (names or indices of `classes`, mixed if need be) -> indices, in the order given."""
  indices = []
  for w in wanted:
    if is_int(w) and 0 <= w < len(classes):
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


def keep_classes(split: Split, kept: list[int]) -> Split:
  """The examples of classes `kept` (indices into split.classes), relabelled 0..k-1 in that order."""
  relabel = np.full(len(split.classes), -1, np.int32)
  relabel[kept] = np.arange(len(kept))
  sub = split.subset(np.flatnonzero(relabel[split.labels] >= 0))  # pool order is kept
  return dataclasses.replace(sub, classes=tuple(split.classes[i] for i in kept), labels=relabel[sub.labels])


def permutation(n: int, seed: int, *words: str) -> np.ndarray:
  """A permutation of range(n) drawn by a generator keyed by the seed and `words`."""
  key = [seed] + [zlib.crc32(w.encode()) for w in words]
  return np.random.default_rng(key).permutation(n)


def by_class(split: Split):
  for c, name in enumerate(split.classes):
    yield name, np.flatnonzero(split.labels == c)


def carve_val(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
  val = []
  for name, positions in by_class(train):
    n_val = min(math.floor(fraction * len(positions) + 0.5), max(len(positions) - 1, 0))
    val.extend(positions[permutation(len(positions), seed, 'val', name)[:n_val]])
  is_val = np.zeros(len(train), bool)
  is_val[val] = True
  return train.subset(np.flatnonzero(~is_val)), train.subset(np.flatnonzero(is_val))


def limit(split: Split, limit: int, seed: int, split_name: str) -> Split:
  keep = []
  for name, positions in by_class(split):
    keep.extend(positions[permutation(len(positions), seed, 'limit', split_name, name)[:limit]])
  return split.subset(np.sort(np.asarray(keep, np.int64)))


def draw(pool: list, counts: tuple[int, ...], seed: int, *words: str) -> list[list]:
  """Disjoint seeded draws of counts[0], counts[1], ... items of `pool`, each in pool order."""
  order = permutation(len(pool), seed, *words)
  draws, start = [], 0
  for n in counts:
    draws.append([pool[i] for i in sorted(order[start:start + n])])
    start += n
  return draws
