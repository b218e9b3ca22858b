"""Every image of a split decoded once before any compute, and what to do with the unreadable ones."""
import numpy as np

from stitchjax import distributed
from stitchjax.data import readers
from stitchjax.data.splits import Split


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
          where = (split.reader.annotations[k] if isinstance(split.reader, readers.FileReader)
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
