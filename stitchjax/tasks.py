"""The task a stitched model is trained and scored on, chosen once: classification or segmentation.

A task holds everything that differs between the two, so nothing else branches on it:
- the head: a linear classifier on the pooled output, or a linear decoder on the final patch
  tokens whose logit map is upsampled to `label_size` (stitchjax/segmentation.py);
- its loss and per-example predictions (class indices, or per-class pixel counts for mIoU),
  and the validation metric computed from them;
- what a probe of a backbone alone reads from the feature cache;
- the labels of a split, how backbones see its images, the records a cell writes and the
  test predictions it saves.

    task = tasks.from_config(config)   # config.task, config.label_size
"""
import dataclasses
import pathlib

import jax.numpy as jnp
import numpy as np
import optax

from stitchjax import atomic, segmentation
from stitchjax.records import Cell

NAMES = ('classification', 'segmentation')


def head_init(dim: int, num_classes: int) -> dict:
  # Zero init: a linear probe's optimum does not depend on it, and it is the same for every seed.
  return {'kernel': np.zeros((dim, num_classes), np.float32), 'bias': np.zeros((num_classes,), np.float32)}


def head_apply(head, features):
  return features.astype(jnp.float32) @ head['kernel'] + head['bias']


def masked_mean(per_example, mask):
  return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def standardised(feats: dict) -> dict:
  """Pooled features {split: (N, D)} scaled by the train split's per-channel mean and std.

  The same linear probe (an affine reparametrisation of its inputs), better conditioned: a MAP
  head's raw output spreads over very different scales, and AdamW then stops far from the
  optimum within a probe's budget (SigLIP-mini on the demo task: 57% raw against 80% converged).
  """
  train = np.asarray(feats['train'], np.float32)
  mean, std = train.mean(0), train.std(0) + 1e-6
  return {s: (np.asarray(f, np.float32) - mean) / std for s, f in feats.items()}


class _Head:
  """What both tasks do alike: the head reads what the task chooses (`head_input`) and maps it with
  `head_logits`, on the stitched model or on a backbone's fixed features (a probe)."""

  def logits(self, model, trainable, frozen, tokens):
    """model: a stitchjax.model.Stitched run from the source's tokens after block n."""
    return self.head_logits(trainable['head'], self.head_input(model, trainable, frozen, tokens))

  # A probe of fixed features: batch['features'] is what head_input would give.
  def probe_loss(self, trainable, frozen, batch):
    del frozen
    return self.loss(self.head_logits(trainable['head'], batch['features']), batch)

  def probe_predictions(self, trainable, frozen, batch):
    del frozen
    return self.predictions(self.head_logits(trainable['head'], batch['features']), batch)


@dataclasses.dataclass(frozen=True)
class Classification(_Head):
  """A linear head on the pooled output; accuracy."""
  name = 'classification'
  metric = 'accuracy'
  label_dtype = np.int32
  label_size = None
  probe_recomputes = False  # a matched stitch's probe reads its pooled outputs, cached once per split

  def head_input(self, model, trainable, frozen, tokens):
    return model.pooled(trainable, frozen, tokens)  # (B, D)

  def head_logits(self, head, features):
    return head_apply(head, features)

  def loss(self, logits, batch):
    return masked_mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']), batch['mask'])

  def predictions(self, logits, batch):
    return {'prediction': jnp.argmax(logits, -1)}

  def score(self, predictions: dict, arrays: dict) -> float:
    pred = predictions['prediction']
    return float(np.mean(pred == np.asarray(arrays['label'][:len(pred)])))

  def probe_features(self, entries: dict, cfg) -> dict:
    """{split: a backbone's cache entry} -> what a probe of it reads: the pooled features."""
    return {s: e['pooled'] for s, e in entries.items()}

  def probe_inputs(self, feats: dict) -> dict:
    return standardised(feats)

  # The run.
  def backbone(self, bb):
    return bb

  def identity(self) -> dict:
    return {}  # (classification workdirs keep the identity they had before tasks)

  def labels(self, split, cache) -> np.ndarray:
    return np.asarray(split.labels, np.int32)

  def label_shape(self, count: int) -> tuple:
    return (count,)

  def test_records(self, cell: Cell, pred: dict, labels, val: float, **extra) -> list[dict]:
    """The validation score the sweep chose by and the test accuracy."""
    return [cell.record('val', self.metric, val, **extra),
            cell.record('test', self.metric, np.mean(pred['prediction'] == labels), n=len(labels), **extra)]

  def save_predictions(self, cell_dir: pathlib.Path, pred: dict) -> None:
    """Per-example test predictions, for the prediction analyses of appendix B."""
    atomic.save_npy(cell_dir / 'test_predictions.npy', np.asarray(pred['prediction'], np.int32))

  def save_test_labels(self, workdir: pathlib.Path, labels) -> None:
    """What the saved test predictions are scored against, for stitchjax/analysis.py's Table 12."""
    atomic.save_npy(workdir / 'test_labels.npy', labels)


@dataclasses.dataclass(frozen=True)
class Segmentation(_Head):
  """A linear decoder on the final patch tokens, upsampled to label_size x label_size; mIoU."""
  label_size: int
  name = 'segmentation'
  metric = 'miou'
  label_dtype = np.uint8  # annotation values, 0 = ignored
  probe_recomputes = True  # a split's dense tokens are too large to cache: recomputed per batch

  def __post_init__(self):
    size = self.label_size
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
      raise ValueError(f'label_size={size!r} must be a positive int (the evaluation resolution)')

  def head_input(self, model, trainable, frozen, tokens):
    return model.patches(trainable, frozen, tokens)  # (B, g*g, D)

  def head_logits(self, head, features):
    return segmentation.decode(head, features, self.label_size)

  def loss(self, logits, batch):
    return segmentation.pixel_loss(logits, batch['label'], batch['mask'])

  def predictions(self, logits, batch):
    return segmentation.pixel_counts(logits, batch['label'])

  def score(self, predictions: dict, arrays: dict) -> float:
    return segmentation.miou(predictions)['miou']

  def probe_features(self, entries: dict, cfg) -> dict:
    """The final patch tokens (a view of the cache)."""
    return {s: e['final'][:, cfg.num_prefix_tokens:] for s, e in entries.items()}

  def probe_inputs(self, feats: dict) -> dict:
    return feats

  # The run.
  def backbone(self, bb):
    """Whole images, and every backbone sees the same pixels (segmentation.dense)."""
    return segmentation.dense(bb)

  def identity(self) -> dict:
    return {'task': self.name, 'label_size': self.label_size}

  def labels(self, split, cache) -> np.ndarray:
    """uint8 (N, L, L) annotations at label_size, cached beside the features."""
    return segmentation.label_maps(split, self.label_size, cache.root / 'labels', write=cache.writer)

  def label_shape(self, count: int) -> tuple:
    return (count, self.label_size, self.label_size)

  def test_records(self, cell: Cell, pred: dict, labels, val: float, **extra) -> list[dict]:
    """The validation mIoU the sweep chose by, the test mIoU and pixel accuracy."""
    m, n = segmentation.miou(pred), len(pred['intersection'])
    return [cell.record('val', self.metric, val, **extra), cell.record('test', self.metric, m['miou'], n=n, **extra),
            cell.record('test', 'pixel_accuracy', m['pixel_accuracy'], n=n, **extra)]

  def save_predictions(self, cell_dir: pathlib.Path, pred: dict) -> None:
    """Per-image, per-class pixel counts, from which any subset's mIoU follows."""
    atomic.save_npz(cell_dir / 'test_counts.npz', **pred)

  def save_test_labels(self, workdir: pathlib.Path, labels) -> None:
    """Nothing: the saved pixel counts are scored already, and the label maps stay in the cache."""


def make(name: str = 'classification', label_size: int | None = None):
  if name == 'classification':
    return Classification()
  if name == 'segmentation':
    return Segmentation(label_size)
  raise ValueError(f'task={name!r} is not one of {NAMES}')


def from_config(config):
  """config.task (default classification) and, for segmentation, config.label_size; errors name the field."""
  try:
    return make(config.get('task', 'classification'), config.get('label_size'))
  except ValueError as e:
    raise ValueError(f'config.{e}') from None
