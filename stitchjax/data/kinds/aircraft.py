"""Kind 'aircraft': FGVC-Aircraft 2013b, root/data/{variants.txt,
images_variant_trainval.txt, images_variant_test.txt, images/<id>.jpg};
the official variant-level trainval / test split. The release has 100
variants (the paper says 102). The bottom 20 rows of every image are a
copyright banner, which the dataset's README says to remove; they are.
Images are not cropped to images_box.txt, as in the usual protocol.
"""
import pathlib

from stitchjax.data import files
from stitchjax.data.splits import Split

BANNER = 20  # rows of copyright banner at the bottom of each FGVC-Aircraft image
OPTIONS = {}


def load(c) -> tuple[Split, Split]:
  data = files.directory(files.root_dir(c) / 'data', 'the data/ folder of fgvc-aircraft-2013b')
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
    splits.append(files.file_split('aircraft', classes, items, trim_bottom=BANNER))
  return tuple(splits)


def _lines(path: pathlib.Path, expected: str) -> list[str]:
  try:
    with open(path) as f:
      return [line.strip() for line in f if line.strip()]
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{path}: not found, expected {expected}') from e
