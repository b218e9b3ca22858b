"""Kind 'fashion_mnist_seg': a small real-image segmentation task for the demo, the
Fashion-MNIST images of `fashion_mnist` with per-pixel labels: pixels >=
foreground=48 are the garment (annotation 2 + its Fashion-MNIST class id),
pixels <= background=8 are background (annotation 1), pixels in between
(soft edges) are ignored (0). Pixel classes: background and the ten garments,
whatever `classes` keeps (a fixed label space, like ADE20K's 150); the
image-level labels are the garment classes, so `classes` and
`limit_per_class` work as for fashion_mnist.
"""
import dataclasses

import numpy as np

from stitchjax.data import readers
from stitchjax.data.kinds import fashion_mnist
from stitchjax.data.splits import Split, is_int

OPTIONS = {'root': fashion_mnist.FASHION_MNIST_ROOT, 'foreground': 48, 'background': 8}
PIXEL_CLASSES = ('background',) + fashion_mnist.FASHION_MNIST_CLASSES


@dataclasses.dataclass(frozen=True, eq=False)
class FashionSegReader(readers.ArrayReader):
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


def load(c) -> tuple[Split, Split]:
  fg, bg = c['foreground'], c['background']
  if not (is_int(fg) and is_int(bg) and 0 <= bg < fg <= 255):
    raise ValueError(f'data.background={bg!r}, data.foreground={fg!r}: expected ints with 0 <= background < '
                     'foreground <= 255')
  out = []
  for s in fashion_mnist.load(c):
    reader = FashionSegReader(s.reader.images, s.reader.files, s.labels, fg, bg)
    out.append(dataclasses.replace(s, kind='fashion_mnist_seg', reader=reader))
  return tuple(out)
