"""Kind 'image_folder': root/{train,test}/<class>/**/*.{jpg,jpeg,png,bmp,gif,webp,tif,tiff}.
Classes are train's subfolders; a test class unknown to train is an error.
"""
import pathlib

from stitchjax.data import files
from stitchjax.data.splits import Split

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')
OPTIONS = {}


def load(c) -> tuple[Split, Split]:
  root = files.root_dir(c)
  train_dir = files.directory(root / 'train', 'train/<class>/ folders of images')
  test_dir = files.directory(root / 'test', 'test/<class>/ folders of images')
  classes = files.subdirs(train_dir)
  if not classes:
    raise ValueError(f'{train_dir}: no class folders, expected train/<class>/<image>')
  unknown = sorted(set(files.subdirs(test_dir)) - set(classes))
  if unknown:
    raise ValueError(f'{test_dir}: classes {unknown} have no folder in {train_dir}')

  def scan(split_dir, require):
    items = []
    for label, name in enumerate(classes):
      paths = _images_under(split_dir / name)
      if require and not paths:
        raise ValueError(f'{split_dir / name}: no images with extensions {IMAGE_EXTENSIONS}')
      items += [(p, label) for p in paths]
    return files.file_split('image_folder', classes, items)

  return scan(train_dir, True), scan(test_dir, False)


def _images_under(folder: pathlib.Path) -> list[pathlib.Path]:
  if not folder.is_dir():
    return []
  return sorted(p for p in folder.rglob('*') if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith('.'))
