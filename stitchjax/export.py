"""Exported stitched models: `load_stitched(dir)` -> a classifier or a segmenter of uint8 images.

An export holds the trained parameters (stitch, and head or segmentation decoder; orbax) and
`stitched.json`: the stitch spec, the task, the class names, and where the two frozen
backbones load from, with a digest of their parameters. The backbones are not copied (a
ViT-L pair is 2.4 GB); loading checks that the checkpoints found are the ones trained against.

    model = stitchjax.load_stitched('workdir/exports/dinov2__siglip2__L14__ffm_tlt__mlp')
    logits = model.logits(uint8_images)       # (B, classes); segmentation: (B, L, L, classes)
    labels = [model.classes[i] for i in model.predict(uint8_images)]

Moved to another machine, an export finds its backbones at the path relative to itself (kept
when the checkpoint shared a parent directory with the workdir), then at the path the run was
given (a Hugging Face repo id resolves in the local cache), or wherever you say:

    model = stitchjax.load_stitched(export, source='/data/ckpt/dinov2-large', target='google/siglip2-large-patch16-384')
"""
import dataclasses
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from stitchjax import atomic
from stitchjax import backbone as backbone_lib
from stitchjax import checkpoints, features, tasks
from stitchjax import model as model_lib
from stitchjax import stitch_layers as stitch_lib
from convert.common import CheckpointError

# 2 added task, label_size and relative backbone paths; 3 each backbone's processor_backend, which a reader
# that did not know it would ignore, preprocessing as 'pil'. Older exports still load.
FORMAT_VERSION = 3
READABLE = (1, 2, 3)


@dataclasses.dataclass(frozen=True, eq=False)
class Exported:
  """A trained stitched model (stitchjax/model.py) with its params and class names, run on uint8 images."""
  model: model_lib.StitchedModel
  params: dict  # {'stitch': ..., 'head': ...}; segmentation: 'head' is the linear decoder
  classes: list

  @property
  def task(self):
    """stitchjax.tasks.Classification or Segmentation (with its label_size)."""
    return self.model.task

  def logits(self, images) -> np.ndarray:
    """uint8 images (B,H,W,3) or a list of (H,W,3) -> logits (B, classes), or for segmentation per-pixel
    logits (B, label_size, label_size, classes). The source backbone sees the pixels."""
    return np.asarray(self.model.logits(self.params, self.model.preprocess(images)))

  def predict(self, images) -> np.ndarray:
    """Class indices into `classes`: (B,), or label maps (B, label_size, label_size)."""
    return self.logits(images).argmax(-1)


def backbone_location(path, out) -> dict:
  """Where an export finds a backbone: the configured path (absolute; a repo id as given) and, when the
  checkpoint and the export share a directory below the root, the path relative to the export."""
  local = pathlib.Path(path)
  if not local.exists():
    return {'path': str(path)}
  local, out = local.absolute(), pathlib.Path(out).absolute()
  shared = os.path.commonpath([local, out])
  where = {'path': str(local)}
  if shared != local.anchor:
    where['relative'] = os.path.relpath(local, out)
  return where


def save_stitched(out, spec: stitch_lib.StitchSpec, params: dict, classes: list, sources: dict,
                  task=tasks.Classification()) -> None:
  """sources: {'source': {'path', 'image_size', 'processor_backend', 'digest'}, 'target': {...}}; written
  atomically. Without a processor_backend, a backbone reloads with 'pil' (as exports written before it)."""
  out = pathlib.Path(out)
  backbones = {role: info | backbone_location(info['path'], out) for role, info in sources.items()}
  with atomic.directory(out) as tmp:
    checkpoints.save_tree(tmp / 'params', params)
    meta = {'format_version': FORMAT_VERSION, 'kind': spec.kind, 'layer': spec.layer, 'lora_rank': spec.lora_rank,
            'dtype': spec.dtype, 'task': task.name, 'label_size': task.label_size, 'classes': list(classes),
            'backbones': backbones}
    (tmp / 'stitched.json').write_text(json.dumps(meta, indent=2))


def _load_backbone(directory: pathlib.Path, role: str, info: dict, given, dtype) -> backbone_lib.Backbone:
  if given is not None:
    location = given
  elif 'relative' in info and (directory / info['relative']).exists():
    location = directory / info['relative']
  else:
    location = info['path']
  try:
    bb = backbone_lib.load_backbone(location, image_size=info['image_size'], dtype=dtype,
                                    processor_backend=info.get('processor_backend', 'pil'))
  except CheckpointError as e:
    hint = '' if given is not None else f"; if it moved, say where: load_stitched(..., {role}='<path or repo id>')"
    raise CheckpointError(f'{directory / "stitched.json"}: the {role} backbone: {e}{hint}') from e
  if features.params_digest(bb.params) != info['digest']:
    raise CheckpointError(f'{directory / "stitched.json"}: the {role} backbone at {location} is not the checkpoint '
                          'this stitch was trained against (parameter digest differs)')
  return bb


def load_stitched(directory, source=None, target=None) -> Exported:
  """An exported stitched model. source, target: where the backbones are now (anything load_backbone accepts),
  when not where the export recorded them; their parameter digests are checked either way."""
  directory = pathlib.Path(directory)
  meta_path = directory / 'stitched.json'
  try:
    meta = json.loads(meta_path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f'{meta_path}: not a stitchjax stitched-model export ({e})') from e
  if meta.get('format_version') not in READABLE:
    raise CheckpointError(f'{meta_path}: format_version {meta.get("format_version")!r}, expected one of {READABLE}')
  task = tasks.make(meta.get('task', 'classification'), meta.get('label_size'))
  dtype = jnp.dtype(meta['dtype'])
  bbs = {role: _load_backbone(directory, role, meta['backbones'][role], given, dtype)
         for role, given in (('source', source), ('target', target))}
  bbs['source'] = task.backbone(bbs['source'])  # the run's view of the images (segmentation: whole, square)
  model = model_lib.stitch(bbs['source'], bbs['target'], meta['layer'], meta['kind'], num_classes=len(meta['classes']),
                           task=task, lora_rank=meta['lora_rank'], dtype=meta['dtype'])
  params = checkpoints.load_tree(directory / 'params', jax.eval_shape(model.init, jax.random.key(0)))
  return Exported(model, params, meta['classes'])
