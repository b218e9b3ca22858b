"""Loading frozen backbones: `load_backbone(source)` -> config, params and pure functions.

    bb = stitchjax.load_backbone('path/to/dinov2-large', image_size=336)
    x = bb.preprocess(uint8_images)                    # (B,336,336,3) float32
    tokens = bb.embed(bb.params, x)                    # == HF hidden_states[0]
    tokens = bb.blocks(bb.params, tokens, 0, 14)       # == HF hidden_states[14]
    pooled = bb.pool(bb.params, bb.final(bb.params, bb.blocks(bb.params, tokens, 14, 24)))

`source` is a transformers directory, a torch-hub `.pth`, a big_vision `.npz`, a
directory written by `save_backbone` / `python -m convert`, or a Hugging Face repo id
held in the local Hugging Face cache ('facebook/dinov2-large', convert/hub.py).
"""
import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from convert import hub, load_checkpoint, read_fields, resample
from convert.common import CheckpointError
from stitchjax import atomic, checkpoints
from stitchjax import preprocess as preprocess_lib
from stitchjax import vit

EXPORT_CONFIG = 'stitchjax.json'
EXPORT_PARAMS = 'params'
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class Backbone:
  """A frozen backbone. Its functions take `params` explicitly, so jitted callers never capture weights."""
  config: vit.ViTConfig
  params: dict
  preprocessing: preprocess_lib.Preprocess
  # Kept so that an export can be re-loaded at another image size exactly as its source would be.
  position_resampling: str = 'bicubic'
  processor_config: dict | None = None
  processor_backend: str = 'pil'  # which of transformers' processors `preprocessing` is (stitchjax/preprocess.py)

  def embed(self, params, images):
    """images (B,S,S,3) float32, already normalised -> tokens (B,T,D)."""
    return vit.embed(self.config, params, images)

  def blocks(self, params, tokens, start: int, stop: int):
    """tokens after block `start` -> tokens after block `stop` (HF hidden_states[start] -> [stop])."""
    return vit.blocks(self.config, params, tokens, start, stop)

  def final(self, params, tokens):
    return vit.final(self.config, params, tokens)

  def pool(self, params, final_tokens):
    return vit.pool(self.config, params, final_tokens)

  def preprocess(self, images) -> np.ndarray:
    """uint8 images (B,H,W,3) or a list of (H,W,3) -> (B,S,S,3) float32, as the family's reference processor."""
    return self.preprocessing(images)

  def forward(self, params, images):
    """The uninterrupted model: (final tokens (B,T,D), pooled (B,D) or None)."""
    return vit.forward(self.config, params, images)


# Small seeded-random layouts for 'init:<family>' paths: plumbing checks, never presented as VFMs.
INIT_LAYOUTS = {
    'dinov2': dict(family='dinov2', depth=8, dim=96, heads=3, mlp_dim=384, patch_size=14, layer_scale=True),
    'dinov3': dict(family='dinov3', depth=8, dim=96, heads=3, mlp_dim=256, patch_size=16, layer_scale=True,
                   num_registers=4, pos_embed='rope', qkv_bias=(True, False, True), mlp='gated', act='silu',
                   norm_eps=1e-5),
    'clip': dict(family='clip', depth=8, dim=96, heads=3, mlp_dim=384, patch_size=14, pre_norm=True,
                 patch_bias=False, act='quick_gelu', norm_eps=1e-5),
    'siglip': dict(family='siglip', depth=8, dim=96, heads=3, mlp_dim=384, patch_size=16, cls_token=False,
                   pool='map', act='gelu_tanh'),
}


def init_layout(name: str, path: str, image_size: int | None) -> vit.ViTConfig:
  """The architecture of backbones.<name>.path = 'init:<family>' (weights: vit.init_params with the run's seed)."""
  family = path.removeprefix('init:')
  if family not in INIT_LAYOUTS:
    raise ValueError(f'backbones.{name}.path={path!r}: unknown layout; expected init:{{{",".join(INIT_LAYOUTS)}}}')
  return vit.ViTConfig(**INIT_LAYOUTS[family], image_size=image_size or 224)


def configured(name: str, spec, seed: int) -> Backbone:
  """A configured backbone: any path load_backbone accepts, or 'init:<family>' for a seeded random layout."""
  path, backend = str(spec.path), configured_processor_backend(name, spec)
  if not path.startswith('init:'):
    return load_backbone(path, image_size=spec.get('image_size'), processor_backend=backend)
  cfg = init_layout(name, path, spec.get('image_size'))
  backend = backend or 'pil'
  return Backbone(cfg, vit.init_params(cfg, jax.random.key(seed)),
                  preprocess_lib.for_family(cfg.family, cfg.image_size, processor_backend=backend),
                  processor_backend=backend)


def configured_processor_backend(name: str, spec) -> str | None:
  """backbones.<name>.processor_backend of a run config, checked before anything loads; None where unset."""
  backend = spec.get('processor_backend')
  if backend is not None and backend not in preprocess_lib.PROCESSOR_BACKENDS:
    raise ValueError(f'backbones.{name}.processor_backend={backend!r} is not one of '
                     f'{preprocess_lib.PROCESSOR_BACKENDS}')
  return backend


def _dtype_name(dtype) -> str:
  name = jnp.dtype(dtype).name
  if name not in vit.DTYPES:
    raise ValueError(f'dtype={name!r} is not supported; use one of {vit.DTYPES}')
  return name


def _with_image_size(fields: dict, params: dict, method: str, image_size: int | None, source) -> tuple[dict, dict]:
  if image_size is None or image_size == fields['image_size']:
    return fields, params
  fields = fields | {'image_size': image_size}
  cfg = vit.ViTConfig(**fields)
  if cfg.pos_embed != 'rope':
    embed = dict(params['embed'])
    embed['pos'] = resample.resample_pos(embed['pos'], cfg.num_pos_prefix, cfg.grid, method)
    params = params | {'embed': embed}
  return fields, params


def preprocessing(cfg: vit.ViTConfig, processor: dict | None, processor_backend: str = 'pil'
                  ) -> preprocess_lib.Preprocess:
  """The reference preprocessing at cfg.image_size: timm's eval transform for a timm checkpoint, else the
  family's transformers processor (as configured by the checkpoint's preprocessor_config.json, if any) of
  processor_backend 'pil' or 'torchvision'."""
  if processor is not None and 'timm' in processor:
    if processor_backend != 'pil':
      raise ValueError(f"processor_backend={processor_backend!r}: a timm checkpoint has one eval transform, timm's "
                       "(a PIL resize), which processor_backend='pil' gives")
    return preprocess_lib.from_timm(processor['timm'], cfg.image_size)
  return preprocess_lib.for_family('siglip' if cfg.family.startswith('siglip') else cfg.family, cfg.image_size,
                                   processor, processor_backend)


def load_backbone(source, image_size: int | None = None, dtype=jnp.float32, heads: int | None = None,
                  architecture: str | None = None, processor_backend: str | None = None) -> Backbone:
  """Loads a checkpoint exactly (or raises CheckpointError naming the file and key).

  image_size: run at this resolution; learned position embeddings are resampled as
    the checkpoint's reference implementation does. Default: the checkpoint's own.
  dtype: compute dtype, float32 or bfloat16. Parameters stay float32.
  heads: attention heads, only for torch-hub DINOv2 files of a non-standard width
    (the files do not store it).
  architecture: the timm architecture of a bare timm state dict (a directory from timm's
    save_for_hf names its own).
  processor_backend: which of transformers' two image processors `preprocess` reproduces, by
    AutoImageProcessor's names: 'pil' or 'torchvision' (stitchjax/preprocess.py: how their pixels
    differ, and why 'pil' is the default). Default: what a stitchjax export recorded, else 'pil'.
    A timm checkpoint has one eval transform, which 'pil' gives.
  """
  if processor_backend is not None:
    preprocess_lib.check_processor_backend(processor_backend)
  path = hub.resolve(source)
  recorded = 'pil'
  if path.is_dir() and (path / EXPORT_CONFIG).exists():
    fields, method, params, processor, recorded = _read_export(path)
  else:
    fields, method, params, processor = load_checkpoint(path, heads=heads, architecture=architecture)
  fields, params = _with_image_size(fields, params, method, image_size, path)
  cfg = vit.ViTConfig(**(fields | {'dtype': _dtype_name(dtype)}))
  backend = recorded if processor_backend is None else processor_backend
  prep = preprocessing(cfg, processor, backend)
  # device_put, as jnp.asarray would compile a copy per shape.
  return Backbone(cfg, jax.device_put(params), prep, method, processor, backend)


def save_backbone(bb: Backbone, out, overwrite: bool = False) -> None:
  """Writes an orbax checkpoint of the params plus `stitchjax.json`, atomically (temp dir, then rename)."""
  out = pathlib.Path(out).absolute()
  if out.exists() and not overwrite:
    raise FileExistsError(f'{out} exists; pass overwrite=True (--force) to replace it')
  with atomic.directory(out) as tmp:
    checkpoints.save_tree(tmp / EXPORT_PARAMS, bb.params)
    meta = {'format_version': FORMAT_VERSION, 'config': bb.config.to_dict() | {'dtype': 'float32'},
            'position_resampling': bb.position_resampling, 'processor_config': bb.processor_config,
            'processor_backend': bb.processor_backend}
    (tmp / EXPORT_CONFIG).write_text(json.dumps(meta, indent=2))


def describe(source, image_size: int | None = None) -> vit.ViTConfig:
  """A checkpoint's architecture at `image_size` (default: its own) from its config alone, reading no
  weights: what the plan job checks a run against. A torch-hub .pth stores no config (CheckpointError)."""
  path = hub.resolve(source)
  if path.is_dir() and (path / EXPORT_CONFIG).exists():
    fields = _export_meta(path)[0].to_dict()
  else:
    fields = read_fields(path)
  return vit.ViTConfig(**(fields | ({'image_size': image_size} if image_size else {})))


def _export_meta(path: pathlib.Path) -> tuple[vit.ViTConfig, str, dict | None, str]:
  """(config, position resampling, processor config, processor backend) from an export's stitchjax.json."""
  meta_path = path / EXPORT_CONFIG
  try:
    meta = json.loads(meta_path.read_text())
    fields, method, processor = dict(meta['config']), meta['position_resampling'], meta['processor_config']
    backend = meta.get('processor_backend', 'pil')  # exports written before the field: transformers' PIL one
  except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
    raise CheckpointError(f'{meta_path}: not a stitchjax export config ({e!r})') from e
  if meta.get('format_version') != FORMAT_VERSION:
    raise CheckpointError(f'{meta_path}: format_version {meta.get("format_version")!r}, expected {FORMAT_VERSION}')
  try:
    return vit.ViTConfig.from_dict(fields), method, processor, backend
  except (TypeError, ValueError) as e:
    raise CheckpointError(f'{meta_path}: bad config: {e}') from e


def _read_export(path: pathlib.Path) -> tuple[dict, str, dict, dict | None, str]:
  cfg, method, processor, backend = _export_meta(path)
  fields = cfg.to_dict()
  want = jax.eval_shape(functools.partial(vit.init_params, cfg), jax.random.key(0))
  return fields, method, checkpoints.load_tree(path / EXPORT_PARAMS, want), processor, backend  # float32 params
