"""The stitch-training objectives and their validation scores (paper §3.2-3.3).

All functions take `(trainable, frozen, batch)`:
- trainable: {'stitch': ..., 'head': ...} (whichever the method trains);
- frozen: {'target': target backbone params, 'block': the source block a LoRA stitch adapts};
- batch: cached features ('source' (B,T_s,D_s) at layer n, 'target_layer' (B,T_t,D_t) at layer n,
  'target_final' (B,T_t,D_t), 'features' (B,D) for probes), 'label' (B,), and 'mask' (B,),
  which is 0 for padding rows so every device count sees the same loss.

- lfm:  || align(S(x_src^n)) - x_tgt^n ||^2 at the stitch point;
- ffm:  || T^N(align(S(x_src^n))) - T^N(x_tgt^n) ||^2 on the target's final (normed) tokens;
- tlt:  cross-entropy of a linear head on the stitched model's pooled output;
- probe: cross-entropy of a linear head on fixed features.
Feature distances average the squared error over tokens and channels.

Segmentation (task='segmentation', paper §5.1, A.2.5): the head is a linear decoder on
the final *patch* tokens, 'label' holds (B, L, L) annotations, the losses are per-pixel
cross-entropy and the predictions are per-class pixel counts for mIoU
(stitchjax/segmentation.py); lfm and ffm do not depend on the task.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stitchjax import distributed, segmentation, train
from stitchjax import stitch as stitch_lib
from stitchjax import vit

TASKS = ('classification', 'segmentation')


def _masked_mean(per_example, mask):
  return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _sq_dist(a, b):
  """Per-example mean squared distance of (B, ..., D) features, in float32."""
  d = a.astype(jnp.float32) - b.astype(jnp.float32)
  return jnp.mean(d * d, axis=tuple(range(1, d.ndim)))


def head_apply(head, features):
  return features.astype(jnp.float32) @ head['kernel'] + head['bias']


def head_init(dim: int, num_classes: int) -> dict:
  # Zero init: a linear probe's optimum does not depend on it, and it is the same for every seed.
  return {'kernel': np.zeros((dim, num_classes), np.float32), 'bias': np.zeros((num_classes,), np.float32)}


@dataclasses.dataclass(frozen=True)
class Stitched:
  """The stitched model from layer n on, run on cached source tokens."""
  spec: stitch_lib.StitchSpec
  target: vit.ViTConfig  # with the compute dtype the run uses
  task: str = 'classification'  # or 'segmentation': a linear decoder on the final patch tokens

  def at_stitch(self, trainable, frozen, source_tokens):
    return stitch_lib.apply(self.spec, trainable['stitch'], source_tokens, frozen.get('block'))

  def final(self, trainable, frozen, source_tokens):
    x = self.at_stitch(trainable, frozen, source_tokens)
    x = vit.blocks(self.target, frozen['target'], x, self.spec.layer, self.target.depth)
    return vit.final(self.target, frozen['target'], x)

  def pooled(self, trainable, frozen, source_tokens):
    return vit.pool(self.target, frozen['target'], self.final(trainable, frozen, source_tokens))

  def _with_patches(self, trainable, frozen, batch):
    """Segmentation: the batch with 'features' = the stitched model's final patch tokens (B, g*g, D)."""
    return batch | {'features': self.final(trainable, frozen, batch['source'])[:, self.target.num_prefix_tokens:]}

  # Losses (lower is better).
  def lfm_loss(self, trainable, frozen, batch):
    return _masked_mean(_sq_dist(self.at_stitch(trainable, frozen, batch['source']), batch['target_layer']),
                        batch['mask'])

  def ffm_loss(self, trainable, frozen, batch):
    return _masked_mean(_sq_dist(self.final(trainable, frozen, batch['source']), batch['target_final']),
                        batch['mask'])

  def tlt_loss(self, trainable, frozen, batch):
    if self.task == 'segmentation':
      return decoder_loss(trainable, frozen, self._with_patches(trainable, frozen, batch))
    logits = head_apply(trainable['head'], self.pooled(trainable, frozen, batch['source']))
    return _masked_mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']), batch['mask'])

  # Per-example quantities for evaluation.
  def distances(self, trainable, frozen, batch):
    """The paper's Figure 2: distance at the stitch point and at the final layer, per example."""
    return {'layer_distance': _sq_dist(self.at_stitch(trainable, frozen, batch['source']), batch['target_layer']),
            'final_distance': _sq_dist(self.final(trainable, frozen, batch['source']), batch['target_final'])}

  def predictions(self, trainable, frozen, batch):
    if self.task == 'segmentation':
      return decoder_counts(trainable, frozen, self._with_patches(trainable, frozen, batch))
    return {'prediction': jnp.argmax(head_apply(trainable['head'], self.pooled(trainable, frozen, batch['source'])), -1)}

  def features(self, trainable, frozen, batch):
    return {'features': self.pooled(trainable, frozen, batch['source'])}

  # Segmentation probe of a trained stitch: its params come in frozen['stitch'], only the decoder trains.
  # (Classification probes cached pooled features instead; dense tokens of a whole split are too large.)
  def frozen_stitch_loss(self, trainable, frozen, batch):
    return self.tlt_loss(trainable | {'stitch': frozen['stitch']}, frozen, batch)

  def frozen_stitch_counts(self, trainable, frozen, batch):
    return self.predictions(trainable | {'stitch': frozen['stitch']}, frozen, batch)


def probe_loss(trainable, frozen, batch):
  del frozen
  logits = head_apply(trainable['head'], batch['features'])
  return _masked_mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']), batch['mask'])


def probe_predictions(trainable, frozen, batch):
  del frozen
  return {'prediction': jnp.argmax(head_apply(trainable['head'], batch['features']), -1)}


def decoder_loss(trainable, frozen, batch):
  """Segmentation probe: linear decoder on fixed patch tokens 'features' (B, g*g, D), 'label' (B, L, L)."""
  del frozen
  logits = segmentation.decode(trainable['head'], batch['features'], batch['label'].shape[-1])
  return segmentation.pixel_loss(logits, batch['label'], batch['mask'])


def decoder_counts(trainable, frozen, batch):
  del frozen
  logits = segmentation.decode(trainable['head'], batch['features'], batch['label'].shape[-1])
  return segmentation.pixel_counts(logits, batch['label'])


def evaluate(fn, trainable, frozen, arrays: dict, batch_size: int, put=lambda b: b) -> dict:
  """Runs a per-example function over arrays in batches -> {name: np.ndarray (N, ...)}."""
  jitted = _jit(fn)
  outs = {}
  for batch in train.batches(arrays, batch_size, seed=None):
    valid = int(batch['mask'].sum())
    for k, v in distributed.to_host(jitted(trainable, frozen, put(batch))).items():
      outs.setdefault(k, []).append(v[:valid])
  return {k: np.concatenate(v) for k, v in outs.items()}


def _jit(fn):
  """One compiled function per evaluation function of equal models (train.by_value)."""
  return _cached_jit(*train.by_value(fn))


@functools.lru_cache(maxsize=32)
def _cached_jit(func, owner):
  """Bounded: every compiled executable keeps memory maps alive, and a long sweep of cells would
  otherwise exhaust the process's map count (vm.max_map_count) and crash inside XLA's compiler."""
  return jax.jit(train.from_key(func, owner))


def accuracy_score(predict_fn, batch_size: int, put=lambda b: b):
  """A validation score for fit(): accuracy of predict_fn on the split (higher is better)."""
  def score(trainable, frozen, arrays):
    pred = evaluate(predict_fn, trainable, frozen, arrays, batch_size, put)['prediction']
    return float(np.mean(pred == np.asarray(arrays['label'][:len(pred)])))
  return score


def miou_score(counts_fn, batch_size: int, put=lambda b: b):
  """A validation score for fit(): mIoU of counts_fn's per-example pixel counts over the split."""
  def score(trainable, frozen, arrays):
    return segmentation.miou(evaluate(counts_fn, trainable, frozen, arrays, batch_size, put))['miou']
  return score


def loss_score(loss_fn, batch_size: int, put=lambda b: b):
  """A validation score for fit(): minus the mean loss over the split (higher is better)."""
  jitted = _jit(loss_fn)

  def score(trainable, frozen, arrays):
    total = count = 0.0
    for batch in train.batches(arrays, batch_size, seed=None):
      n = float(batch['mask'].sum())
      total += float(distributed.to_host(jitted(trainable, frozen, put(batch)))) * n
      count += n
    return -total / count
  return score
