"""Backbone forward throughput: stitchjax against transformers (PyTorch, SDPA), same inputs, same run.

    python benchmarks/forward.py --family dinov2 --size B --image-size 224 --batch 8

Random weights from the family's real configuration (this measures speed only).
Both sides run the whole model (embedding, all blocks, final norm, pooler) on the
same normalised images, alternating rounds so that machine noise hits both alike.
Prints img/s for each and their ratio (stitchjax / transformers).
"""
import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers as T

import stitchjax

SIZES = {'S': dict(hidden_size=384, num_attention_heads=6, num_hidden_layers=12),
         'B': dict(hidden_size=768, num_attention_heads=12, num_hidden_layers=12),
         'L': dict(hidden_size=1024, num_attention_heads=16, num_hidden_layers=24)}


def hf_model(family: str, size: str, image_size: int, patch_size: int):
  """A transformers model with the family's real layout at this size (image_size avoids any interpolation)."""
  s = SIZES[size]
  mlp = 4 * s['hidden_size']
  if family == 'dinov2':
    return T.Dinov2Model(T.Dinov2Config(**s, image_size=image_size, patch_size=patch_size))
  if family == 'dinov3':
    return T.DINOv3ViTModel(T.DINOv3ViTConfig(**s, intermediate_size=mlp, image_size=image_size,
                                              patch_size=patch_size, num_register_tokens=4))
  if family == 'clip':
    return T.CLIPVisionModel(T.CLIPVisionConfig(**s, intermediate_size=mlp, image_size=image_size,
                                                patch_size=patch_size))
  if family == 'siglip2':
    return T.SiglipVisionModel(T.SiglipVisionConfig(**s, intermediate_size=mlp, image_size=image_size,
                                                    patch_size=patch_size))
  raise SystemExit(f'--family must be one of dinov2, dinov3, clip, siglip2; got {family!r}')


def throughput(fn, batch: int, rounds: int) -> list[float]:
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    fn()
    times.append(batch / (time.perf_counter() - start))
  return times


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--family', default='dinov2')
  p.add_argument('--size', default='B', choices=sorted(SIZES))
  p.add_argument('--image-size', type=int, default=224)
  p.add_argument('--patch-size', type=int, default=None, help='default: 14 for DINOv2/CLIP, 16 otherwise')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  p.add_argument('--rounds', type=int, default=5, help='timed rounds per side, alternating')
  args = p.parse_args()
  patch = args.patch_size or (14 if args.family in ('dinov2', 'clip') else 16)
  torch.manual_seed(0)
  model = hf_model(args.family, args.size, args.image_size, patch).eval()
  model.config._attn_implementation = 'sdpa'
  with tempfile.TemporaryDirectory() as d:
    model.save_pretrained(d)
    bb = stitchjax.load_backbone(d, dtype=jnp.dtype(args.dtype))
  torch_dtype = getattr(torch, args.dtype)
  model = model.to(torch_dtype)
  x = np.random.default_rng(0).standard_normal((args.batch, args.image_size, args.image_size, 3)).astype(np.float32)
  x_jax = jax.device_put(x)
  x_torch = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(torch_dtype)
  forward = jax.jit(bb.forward)

  def run_jax():
    jax.block_until_ready(forward(bb.params, x_jax))

  def run_torch():
    with torch.inference_mode():
      model(x_torch)

  run_jax(), run_torch()  # compile / warm up
  ours, theirs = [], []
  for _ in range(args.rounds):
    ours += throughput(run_jax, args.batch, 1)
    theirs += throughput(run_torch, args.batch, 1)
  a, b = statistics.median(ours), statistics.median(theirs)
  print(f'# {datetime.date.today()} {platform.node()} device={jax.devices()[0].device_kind} cpus={os.cpu_count()} '
        f'jax={jax.__version__} torch={torch.__version__} transformers={T.__version__}')
  print(f'# {args.family} {args.size}/{patch} @{args.image_size} batch={args.batch} {args.dtype} '
        f'median of {args.rounds} alternating rounds')
  print('| implementation | img/s |')
  print('|---|---|')
  print(f'| stitchjax | {a:.1f} |')
  print(f'| transformers (SDPA) | {b:.1f} |')
  print(f'| ratio | {a / b:.2f}x |')


if __name__ == '__main__':
  main()
