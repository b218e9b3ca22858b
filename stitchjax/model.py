"""The stitched model: a source's blocks [0, n), a stitch layer, a target's blocks [n, N) (paper §3.1).

    model = stitchjax.stitch('path/to/dinov2', 'path/to/siglip2', layer=14, kind='mlp', num_classes=10)
    params = model.init(jax.random.key(0))           # {'stitch': ..., 'head': ...}: all that trains
    x = model.preprocess(uint8_images)               # the source's processor: the source sees the pixels
    tokens = model.apply(params, x)                  # (B, T_t, D_t): the target's final (normed) tokens
    pooled = model.features(params, x)               # (B, D_t): the target's pooling
    logits = model.logits(params, x)                 # (B, classes); segmentation: (B, L, L, classes)

`Stitched` is the composition itself: static, hashable, every parameter an argument. The
protocol (stitchjax/protocol.py) runs it from cached source tokens, the VST (stitchjax/tree.py)
runs its stitch into a span of a branch, and exports (stitchjax/export.py) run it from pixels.
`StitchedModel` pairs it with the two frozen backbones and a head. `stitchjax.fit` trains its
parameters with the objectives of stitchjax/objectives.py and the trainer of stitchjax/train.py.
"""
import dataclasses
import functools

import jax
import numpy as np

from stitchjax import backbone as backbone_lib
from stitchjax import tasks, vit
from stitchjax import stitch_layers as stitch_lib


@dataclasses.dataclass(frozen=True)
class Stitched:
  """The composition. trainable: {'stitch', 'head'?}; frozen: {'source'?, 'target', 'block'?} where 'block'
  is the source's block n+1 that a LoRA stitch adapts. Methods taking `tokens` start from the source's
  tokens after block n, which is how training runs them (from the feature cache)."""
  spec: stitch_lib.StitchSpec
  task: tasks.Classification | tasks.Segmentation = tasks.Classification()  # what the head does
  remat: bool = False  # the target's blocks recompute their activations in the backward pass

  @property
  def target(self) -> vit.ViTConfig:
    return dataclasses.replace(self.spec.target, remat=self.remat)

  def source_tokens(self, source_params, images):
    """Preprocessed images (B, S, S, 3) -> the source's tokens after block n."""
    cfg = self.spec.source
    return vit.blocks(cfg, source_params, vit.embed(cfg, source_params, images), 0, self.spec.layer)

  def at_stitch(self, trainable, frozen, tokens):
    return stitch_lib.apply(self.spec, trainable['stitch'], tokens, frozen.get('block'))

  def final(self, trainable, frozen, tokens):
    x = vit.blocks(self.target, frozen['target'], self.at_stitch(trainable, frozen, tokens), self.spec.layer,
                   self.target.depth)
    return vit.final(self.target, frozen['target'], x)

  def pooled(self, trainable, frozen, tokens):
    return vit.pool(self.target, frozen['target'], self.final(trainable, frozen, tokens))

  def patches(self, trainable, frozen, tokens):
    """The final patch tokens (B, g*g, D), what a segmentation decoder reads."""
    return self.final(trainable, frozen, tokens)[:, self.target.num_prefix_tokens:]

  def logits(self, trainable, frozen, tokens):
    """The head's logits (B, classes); segmentation: per-pixel (B, label_size, label_size, classes)."""
    return self.task.logits(self, trainable, frozen, tokens)

  def init(self, rng, frozen, num_classes: int | None = None) -> dict:
    params = {'stitch': stitch_lib.init(self.spec, rng, frozen.get('block'))}
    return params if num_classes is None else params | {'head': tasks.head_init(self.target.dim, num_classes)}


OUTPUTS = {'tokens': Stitched.final, 'features': Stitched.pooled, 'logits': Stitched.logits}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _from_pixels(net: Stitched, output: str, params, frozen, images):
  return OUTPUTS[output](net, params, frozen, net.source_tokens(frozen['source'], images))


@dataclasses.dataclass(frozen=True, eq=False)
class StitchedModel:
  """A Stitched composition with its two frozen backbones and, optionally, a linear head or decoder.
  Every method is pure: params are an argument, and the backbones' params (`frozen`, by default the
  backbones' own) reach the compiled function as arguments, never as constants."""
  source: backbone_lib.Backbone
  target: backbone_lib.Backbone
  net: Stitched
  num_classes: int | None = None

  @property
  def spec(self) -> stitch_lib.StitchSpec:
    return self.net.spec

  @property
  def task(self) -> tasks.Classification | tasks.Segmentation:
    return self.net.task

  def frozen(self, with_source: bool = True) -> dict:
    """The backbones' params as the composition reads them; without the source when training runs from
    cached source tokens."""
    out = {'target': self.target.params}
    if (block := stitch_lib.frozen_block(self.spec, self.source.params)) is not None:
      out['block'] = block
    return out | {'source': self.source.params} if with_source else out

  def init(self, rng) -> dict:
    """The trainable params: {'stitch'} and, with num_classes, a zero 'head'."""
    return self.net.init(rng, self.frozen(with_source=False), self.num_classes)

  def preprocess(self, images) -> np.ndarray:
    """uint8 images (B,H,W,3) or a list of (H,W,3) -> the source's input (B,S,S,3) float32."""
    return self.source.preprocess(images)

  def apply(self, params, images, frozen=None):
    """Preprocessed images -> the target's final tokens (B, T_t, D_t)."""
    return self._run('tokens', params, images, frozen)

  def features(self, params, images, frozen=None):
    """Preprocessed images -> the target's pooled output (B, D_t)."""
    return self._run('features', params, images, frozen)

  def logits(self, params, images, frozen=None):
    if 'head' not in params:
      raise ValueError("params has no 'head': build the model with num_classes=... and train it with loss='tlt'")
    return self._run('logits', params, images, frozen)

  def predict(self, params, images, frozen=None) -> np.ndarray:
    """Class indices (B,), or label maps (B, label_size, label_size)."""
    return np.asarray(self.logits(params, images, frozen)).argmax(-1)

  def _run(self, output: str, params, images, frozen):
    frozen = self.frozen() if frozen is None else frozen
    return _from_pixels(self.net, output, params, frozen, images)


def stitch(source, target, layer: int, kind: str = 'mlp', *, num_classes: int | None = None,
           task='classification', label_size: int | None = None, lora_rank: int = 8,
           dtype: str | None = None, remat: bool = False, processor_backend: str | None = None) -> StitchedModel:
  """Stitches `source`'s blocks [0, layer) into `target`'s blocks [layer, N) with a `kind` stitch layer
  ('linear', 'mlp' or 'lora'; stitchjax/stitch_layers.py).

  source, target: Backbones, or anything load_backbone accepts (paths, repo ids in the local cache), loaded
    with processor_backend: which transformers image processor they preprocess as, 'pil' or 'torchvision'
    (load_backbone; stitchjax/preprocess.py). A Backbone keeps the one it was loaded with.
  num_classes: add a linear head (classification) or decoder (segmentation, with label_size).
  dtype: the stitch's compute dtype; default the target's.
  """
  source, target = (b if isinstance(b, backbone_lib.Backbone) else
                    backbone_lib.load_backbone(b, processor_backend=processor_backend) for b in (source, target))
  spec = stitch_lib.StitchSpec(kind, source.config, target.config, layer, lora_rank=lora_rank,
                               dtype=dtype or target.config.dtype)
  task = tasks.make(task, label_size) if isinstance(task, str) else task
  return StitchedModel(source, target, Stitched(spec, task, remat), num_classes)
