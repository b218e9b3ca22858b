"""Exported stitched classifiers: `load_stitched(dir)` -> a model that classifies uint8 images.

An export holds the stitch and head parameters (orbax) and `stitched.json`: the
stitch spec, the class names, and where the two frozen backbones load from,
with a digest of their parameters. The backbones are not copied (a ViT-L pair is
2.4 GB); loading checks that the checkpoints found are the ones trained against.

    model = stitchjax.load_stitched('workdir/exports/dinov2__siglip2__L14__ffm_tlt__mlp')
    logits = model.logits(uint8_images)       # (B, num_classes)
    labels = [model.classes[i] for i in logits.argmax(-1)]
"""
import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from stitchjax import atomic
from stitchjax import backbone as backbone_lib
from stitchjax import features, objectives, train
from stitchjax import stitch as stitch_lib
from convert.common import CheckpointError

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class StitchedClassifier:
  source: backbone_lib.Backbone
  target: backbone_lib.Backbone
  spec: stitch_lib.StitchSpec
  params: dict  # {'stitch': ..., 'head': ...}
  classes: list

  def logits(self, images) -> np.ndarray:
    """uint8 images (B,H,W,3) or a list of (H,W,3) -> logits (B, num_classes). The source sees the pixels."""
    x = self.source.preprocess(images)
    return np.asarray(_logits(self.spec, self.params, self.source.params, self.target.params, x))


def _forward(spec: stitch_lib.StitchSpec, params, source_params, target_params, x):
  from stitchjax import vit
  tokens = vit.blocks(spec.source, source_params, vit.embed(spec.source, source_params, x), 0, spec.layer)
  model = objectives.Stitched(spec, spec.target)
  frozen = {'target': target_params, 'block': stitch_lib.frozen_block(spec, source_params)}
  return objectives.head_apply(params['head'], model.pooled(params, frozen, tokens))


_logits = jax.jit(_forward, static_argnums=0)


def save_stitched(out, spec: stitch_lib.StitchSpec, params: dict, classes: list, sources: dict) -> None:
  """sources: {'source': {'path', 'image_size', 'digest'}, 'target': {...}}; written atomically."""
  with atomic.directory(out) as tmp:
    train.save_tree(tmp / 'params', params)
    meta = {'format_version': FORMAT_VERSION, 'kind': spec.kind, 'layer': spec.layer, 'lora_rank': spec.lora_rank,
            'dtype': spec.dtype, 'classes': list(classes), 'backbones': sources}
    (tmp / 'stitched.json').write_text(json.dumps(meta, indent=2))


def load_stitched(directory) -> StitchedClassifier:
  directory = pathlib.Path(directory)
  meta_path = directory / 'stitched.json'
  try:
    meta = json.loads(meta_path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f'{meta_path}: not a stitchjax stitched-model export ({e})') from e
  if meta.get('format_version') != FORMAT_VERSION:
    raise CheckpointError(f'{meta_path}: format_version {meta.get("format_version")!r}, expected {FORMAT_VERSION}')
  bbs = {}
  for role in ('source', 'target'):
    info = meta['backbones'][role]
    bb = backbone_lib.load_backbone(info['path'], image_size=info['image_size'], dtype=jnp.dtype(meta['dtype']))
    if features.params_digest(bb.params) != info['digest']:
      raise CheckpointError(f'{meta_path}: the {role} backbone at {info["path"]} is not the checkpoint this stitch '
                            'was trained against (parameter digest differs)')
    bbs[role] = bb
  spec = stitch_lib.StitchSpec(meta['kind'], bbs['source'].config, bbs['target'].config, meta['layer'],
                               lora_rank=meta['lora_rank'], dtype=meta['dtype'])
  like = {'stitch': stitch_lib.init(spec, jax.random.key(0), stitch_lib.frozen_block(spec, bbs['source'].params)),
          'head': objectives.head_init(spec.target.dim, len(meta['classes']))}
  try:
    params = train.load_tree(directory / 'params', like)
  except Exception as e:
    raise CheckpointError(f'{directory / "params"}: cannot restore the stitch parameters ({e})') from e
  return StitchedClassifier(bbs['source'], bbs['target'], spec, params, meta['classes'])
