"""What the file-based kinds share: the dataset root, folders, JSON files and splits of image files."""
import json
import os
import pathlib

import numpy as np

from stitchjax.data import readers
from stitchjax.data.splits import Split


def root_dir(c) -> pathlib.Path:
  root = pathlib.Path(c['root']).expanduser().resolve()
  if not root.is_dir():
    raise FileNotFoundError(f'data.root={str(c["root"])!r}: no such directory (expected the {c["kind"]} '
                            'dataset there, see stitchjax/data/kinds/)')
  return root


def directory(path: pathlib.Path, expected: str) -> pathlib.Path:
  if not path.is_dir():
    raise FileNotFoundError(f'{path}: no such directory, expected {expected}')
  return path


def subdirs(path: pathlib.Path) -> list[str]:
  return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith('.'))


def file_split(kind, classes, items, **reader_args) -> Split:
  """items: (path, label) or (path, label, box) in pool order."""
  paths = tuple(str(item[0]) for item in items)
  boxes = tuple(item[2] for item in items) if items and len(items[0]) == 3 else None
  reader = readers.FileReader(paths, boxes, **reader_args)
  return Split(kind, tuple(classes), reader, np.arange(len(items)), [item[1] for item in items])


def read_json(path, expected: str):
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'{path}: not found, expected {expected}') from e
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'{path}: malformed JSON ({e}), expected {expected}') from e
