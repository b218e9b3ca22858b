"""Semantic segmentation with a linear decoder (paper §5.1, Table 2; appendix A.2.3-A.2.5, following [23]).

A linear layer maps each final patch token (B, g*g, D) to class logits (B, g, g, C);
the logit map is bilinearly upsampled to the label resolution and trained with
per-pixel cross-entropy. Annotations use ADE20K's convention: 0 is ignored and value
k is class k - 1 (mmseg's reduce_zero_label). The metric is mIoU over a whole split:
per-class intersections and unions are summed over every pixel of every image, and
classes absent from both predictions and labels (union 0) are left out of the mean,
as mmseg's `total_intersect_and_union` / `nanmean` do.

Choices the paper leaves open (it defers to [23]), one setting for every backbone so
that every cell of a run is scored on the same labels:
- Images: each backbone's own processor (resampling filter, rescale, mean/std), with
  its geometry made a square resize of the whole image to the backbone's input size
  (`dense`): a center crop would discard labelled pixels, and different crops per
  family would score stitched and self-stitched models on different pixels.
- Labels: the whole annotation resized to `label_size` x `label_size` with PIL
  nearest neighbour (pixel centres aligned, as the half-pixel bilinear upsampling
  of the logits), once per split, cached as uint8 beside the feature cache.
So mIoU is measured on the resized square view, not at each image's original size.
"""
import dataclasses
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from stitchjax import atomic, distributed, features


def dense(bb):
  """The backbone with its processor's resize+crop replaced by a square resize to its input size."""
  p = bb.preprocessing
  return dataclasses.replace(bb, preprocessing=dataclasses.replace(p, resize='square', size=p.output_size, crop=None))


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
  """uint8 (H, W) annotation -> (size, size), nearest neighbour (PIL: the source pixel under each centre)."""
  return np.asarray(Image.fromarray(labels).resize((size, size), Image.NEAREST))


def label_maps(split, size: int, root, write: bool = True) -> np.ndarray:
  """uint8 (N, size, size) resized annotations of `split`, memory-mapped; computed once per (split, size).

  write=False: another process writes `root` (stitchjax/distributed.py); wait for it.
  """
  entry = pathlib.Path(root) / features.digest({'labels': split.fingerprint, 'size': size, 'resize': 'pil-nearest'})
  missing = not (entry / 'labels.npy').exists()  # atomic.directory renames a finished entry into place
  if distributed.any_process(missing):
    if missing and write:
      with atomic.directory(entry) as tmp:
        out = np.lib.format.open_memmap(tmp / 'labels.npy', mode='w+', dtype=np.uint8, shape=(len(split), size, size))
        for i in distributed.progress(range(len(split)), desc=f'label maps {size}px', unit='image', leave=False):
          out[i] = resize_labels(split.annotation(i), size)
        out.flush()
        del out
    distributed.barrier(f'label maps {entry.name}')
  return np.load(entry / 'labels.npy', mmap_mode='r')


def upsample(logits, size: int):
  """(B, g, g, C) -> (B, size, size, C), bilinear with half-pixel centres (torch align_corners=False)."""
  b, _, _, c = logits.shape
  return jax.image.resize(logits, (b, size, size, c), 'bilinear', antialias=False)


def decode(head, patches, size: int):
  """The linear decoder: patch tokens (B, g*g, D) -> per-pixel logits (B, size, size, C), float32."""
  b, n, _ = patches.shape
  g = math.isqrt(n)
  logits = patches.astype(jnp.float32) @ head['kernel'] + head['bias']
  return upsample(logits.reshape(b, g, g, -1), size)


def pixel_loss(logits, labels, mask):
  """Cross-entropy averaged over the labelled pixels (label > 0) of the unmasked examples.

  logits (B, L, L, C); labels (B, L, L) annotation values; mask (B,) 0 for padding rows.
  """
  labels = labels.astype(jnp.int32)
  weight = (labels > 0) * mask[:, None, None]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels - 1, 0))
  return jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def pixel_counts(logits, labels) -> dict:
  """Per example and class (B, C) int32: 'intersection', 'pred_area', 'label_area' over labelled pixels."""
  c = logits.shape[-1]
  labels = labels.astype(jnp.int32)
  valid, target, pred = labels > 0, labels - 1, jnp.argmax(logits, -1)
  # Ignored pixels count in no class: they go to an extra bin that is dropped.
  count = jax.vmap(lambda x: jnp.bincount(x.ravel(), length=c + 1)[:c])
  return {'intersection': count(jnp.where(valid & (pred == target), target, c)),
          'pred_area': count(jnp.where(valid, pred, c)),
          'label_area': count(jnp.where(valid, target, c))}


def miou(counts: dict) -> dict:
  """{'miou', 'iou' (C,) with nan for classes in neither, 'pixel_accuracy'} from per-example counts (N, C)."""
  inter, pred, label = (np.asarray(counts[k], np.int64).sum(0) for k in ('intersection', 'pred_area', 'label_area'))
  union = pred + label - inter
  with np.errstate(invalid='ignore', divide='ignore'):
    iou = inter / union  # 0 / 0 = nan: the class is in neither, and nanmean leaves it out
  return {'miou': float(np.nanmean(iou)) if np.isfinite(iou).any() else float('nan'), 'iou': iou,
          'pixel_accuracy': float(inter.sum() / max(label.sum(), 1))}
