"""Checkpoint converters: numpy key and shape maps into the stacked stitchjax ViT tree (stitchjax/vit.py),
checked against the ViT's parameter shapes (jax.eval_shape: nothing runs or compiles).

One small module per source layout:
- `hf`: transformers directories (DINOv2, DINOv2 with registers, DINOv3, CLIP, SigLIP, SigLIP2);
- `torch_hub`: the original DINOv2 / DINOv3 torch-hub `.pth` files, read safely by `pth`;
- `big_vision`: big_vision SigLIP2 `.npz` files;
- `timm`: timm directories (`save_for_hf`) and bare timm state dicts of a named architecture;
- `hub`: repo ids ('facebook/dinov2-large') resolved in the local Hugging Face cache;
- `common`: the reader every layout fills, its shared key maps and the final shape check.

`python -m convert SRC OUT [--image-size N]` writes an orbax checkpoint plus a JSON
config that `stitchjax.load_backbone` reads. Nothing is ever fetched from a hub.
"""
import pathlib

from convert import big_vision, common, hf, timm, torch_hub
from convert.common import CheckpointError


def load_checkpoint(source, heads: int | None = None, architecture: str | None = None) -> tuple[dict, str, dict, dict | None]:
  """Any supported layout -> (ViTConfig fields at native resolution, position resampling method,
  float32 numpy params, the preprocessor config (transformers') or {'timm': pretrained_cfg}, or None).

  heads: the attention head count, for torch-hub DINOv2 files of a width other than
    the released ones (they do not store it); every other layout records it.
  architecture: the timm architecture of a bare timm state dict (.safetensors, .pth, .bin).
  """
  path = pathlib.Path(source)
  if not path.exists():
    raise CheckpointError(f'{path}: no such file or directory')
  if path.is_dir():
    if (path / 'config.json').exists():
      return timm.load(path, architecture) if timm.is_timm(common.read_config(path)) else hf.load(path)
    raise CheckpointError(f'{path}: a directory without config.json (transformers) or stitchjax.json (stitchjax export)')
  if architecture is not None:
    return timm.load(path, architecture)
  if path.suffix in ('.pth', '.pt'):
    return torch_hub.load(path, heads=heads)
  if path.suffix == '.npz':
    return big_vision.load(path)
  raise CheckpointError(f'{path}: unknown checkpoint format; expected a transformers or timm directory, '
                        'a stitchjax export, a torch-hub .pth, a big_vision .npz, or a bare timm state dict '
                        'with its architecture named')


def read_fields(source) -> dict:
  """ViTConfig fields at native resolution from what a checkpoint says of itself, reading no weights: a
  transformers config.json, or a big_vision .npz's array headers. A torch-hub .pth holds no config."""
  path = pathlib.Path(source)
  if path.is_dir() and (path / 'config.json').exists():
    config = common.read_config(path)
    if timm.is_timm(config):
      return timm.fields(path, config)
    return hf.vit_config(hf.architecture(config, path), config, path)[0]
  if path.suffix == '.npz' and path.is_file():
    return big_vision.fields(path)
  raise CheckpointError(f'{path}: no architecture to read without loading the weights (a torch-hub .pth stores '
                        'none; it is read when the run loads it)' if path.exists() else
                        f'{path}: no such file or directory')
