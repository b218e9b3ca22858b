"""Writes tests/data/timm: tiny timm models of each supported architecture (random weights, timm's own
layouts) and what timm computes with them, for tests/test_convert_timm.py.

timm imports torchvision, and the only torchvision wheels this project's CI can install are CUDA
builds that do not load beside its CPU torch; so the tests read timm's outputs from these files, and
also compare against timm live wherever it imports (tests/test_convert_timm.py). Regenerate with a
Python that has timm (pip install timm==1.0.31 torch torchvision safetensors):

    python tests/timm_reference.py tests/data/timm

Per case: `model/` as `timm.models.save_for_hf` writes it (config.json, model.safetensors), and
`reference.npz`: float32 NHWC inputs at the native and at another resolution, the tokens after the
embedding (`embed`), after every block (`block_<i>`), after the final norm (`final`) and the pooled
output (`pooled`), each at both resolutions (`_other`: the checkpoint loaded at the other size, its
positions resampled as timm's loader does); and the eval transform of a few uint8 images.
"""
import json
import pathlib
import sys

import numpy as np

# name -> (timm architecture, tiny overrides of its layout, native image size, other image size)
CASES = {
    'dinov2': ('vit_large_patch14_dinov2', dict(depth=3, embed_dim=32, num_heads=4), 42, 56),
    'dinov2_reg4': ('vit_large_patch14_reg4_dinov2', dict(depth=3, embed_dim=32, num_heads=4), 42, 56),
    'clip': ('vit_large_patch14_clip_336', dict(depth=3, embed_dim=32, num_heads=4), 42, 28),
    'clip_quickgelu': ('vit_large_patch14_clip_quickgelu_336', dict(depth=3, embed_dim=32, num_heads=4), 42, 56),
    'siglip': ('vit_large_patch16_siglip_384', dict(depth=3, embed_dim=32, num_heads=4), 48, 32),
    'siglip_so400m': ('vit_so400m_patch14_siglip_384', dict(depth=3, embed_dim=32, num_heads=4), 42, 56),
    'aimv2': ('aimv2_large_patch14_336', dict(depth=3, embed_dim=32, num_heads=4), 42, 56),
    'intern300m': ('vit_intern300m_patch14_448', dict(depth=3, embed_dim=32, num_heads=4), 42, 56),
    'dinov2_qk_norm': ('vit_large_patch14_dinov2', dict(depth=3, embed_dim=32, num_heads=4, qk_norm=True), 42, 56),
    'eva02': ('eva02_large_patch14_clip_336', dict(depth=3, embed_dim=32, num_heads=4), 42, 56),
    'pe': ('vit_pe_core_large_patch14_336', dict(depth=3, embed_dim=32, num_heads=4), 42, 56),
    'dinov3': ('vit_large_patch16_dinov3_qkvb', dict(depth=3, embed_dim=32, num_heads=4), 48, 32),
}
IMAGE_SHAPES = ((37, 53), (64, 40), (42, 42))  # uint8 images for the eval transform: wide, tall, square


def perturbed(model, seed):
  """Random weights far from timm's init, so that layer scale, norms and biases all matter."""
  import torch
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      scale = 0.3 if p.ndim <= 1 or 'token' in name or 'latent' in name or 'pos_embed' in name else 0.05
      p.add_(torch.randn(p.shape, generator=g) * scale)
  return model.eval()


def trace(model, images_nhwc):
  """The model's tokens at every boundary stitchjax splits at, and its pooled output."""
  import torch
  x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)
  out, hooks = {}, []

  def keep(name):
    return lambda module, inputs, output: out.__setitem__(name, output.detach().numpy().copy())
  hooks.append(model.norm_pre.register_forward_hook(keep('embed')))
  for i, block in enumerate(model.blocks):
    hooks.append(block.register_forward_hook(keep(f'block_{i}')))
  with torch.no_grad():
    final = model.forward_features(x)
    out['final'] = final.numpy().copy()
    out['pooled'] = model.forward_head(final, pre_logits=True).numpy().copy()
  for h in hooks:
    h.remove()
  return out


def write(root: pathlib.Path, name: str) -> None:
  import timm
  import torch
  from PIL import Image
  arch, overrides, size, other = CASES[name]
  torch.manual_seed(0)
  args = dict(overrides, num_classes=0)
  model = perturbed(timm.create_model(arch, pretrained=False, img_size=size, **args), seed=len(name))
  out = root / name
  timm.models.save_for_hf(model, out / 'model', safe_serialization=True)
  rng = np.random.default_rng(0)
  arrays = {'images': rng.normal(size=(2, size, size, 3)).astype(np.float32),
            'images_other': rng.normal(size=(2, other, other, 3)).astype(np.float32)}
  arrays.update(trace(model, arrays['images']))
  resized = timm.create_model(arch, pretrained=True, img_size=other, **args,
                              pretrained_cfg_overlay=dict(file=str(out / 'model' / 'model.safetensors'))).eval()
  arrays.update({f'{k}_other': v for k, v in trace(resized, arrays['images_other']).items()})
  # The eval transform of what the saved directory says of itself (its pretrained_cfg), at the size run.
  saved = json.loads((out / 'model' / 'config.json').read_text())['pretrained_cfg']
  data_config = timm.data.resolve_data_config({'input_size': (3, size, size)}, pretrained_cfg=saved)
  transform = timm.data.create_transform(**data_config)
  for i, shape in enumerate(IMAGE_SHAPES):
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    arrays[f'uint8_{i}'] = image
    arrays[f'transformed_{i}'] = transform(Image.fromarray(image)).permute(1, 2, 0).numpy()
  np.savez_compressed(out / 'reference.npz', **arrays)
  print(f'{name}: {arch} at {size} and {other} px, timm {timm.__version__}')


if __name__ == '__main__':
  target = pathlib.Path(sys.argv[1])
  for case in sys.argv[2:] or CASES:
    write(target, case)
