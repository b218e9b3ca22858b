"""Kind 'fashion_mnist': the four IDX files {train,t10k}-{images-idx3,labels-idx1}-ubyte
(optionally .gz) in root, by default /usr/share/datasets/fashion-mnist
(Debian package dataset-fashion-mnist). 28x28 grayscale, repeated to RGB.
"""
import gzip
import math
import pathlib

import numpy as np

from stitchjax.data import readers
from stitchjax.data.splits import Split

FASHION_MNIST_ROOT = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                         'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
OPTIONS = {'root': FASHION_MNIST_ROOT}


def load(c) -> tuple[Split, Split]:
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
    reader = readers.ArrayReader(images, (str(image_file.resolve()), str(label_file.resolve())))
    splits.append(Split('fashion_mnist', FASHION_MNIST_CLASSES, reader, np.arange(len(labels)), labels))
  return tuple(splits)


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
