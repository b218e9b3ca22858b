"""Backbone forward throughput: stitchjax against transformers (PyTorch, SDPA), same inputs, same run.

    python benchmarks/forward.py --family dinov2 --size B --image-size 224 --batch 8
    python benchmarks/forward.py --family all --size B --image-size 224 --batch 8 --cores 1
    python benchmarks/forward.py --family all --size L --batch 64 --dtype bfloat16     # GPU (issue 7)

Random weights from the family's real configuration (this measures speed only).
Both sides run the whole model (embedding, all blocks, final norm, pooler) on the
same normalised images, in the same precision, alternating rounds so that machine
noise hits both alike. Prints one markdown row per family: img/s for each, their
ratio (stitchjax / transformers) and, on a GPU, MFU: model FLOPs per second (counted
by `forward_flops`) over the bf16 matmul peak measured in the same run.

--cores N pins the whole process (XLA's thread pool and torch's) to N cores. On a
shared machine this makes the ratio a measure of kernels rather than of how each
runtime's thread pool copes with other processes on its cores.
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

FAMILIES = ('dinov2', 'clip', 'siglip2', 'dinov3')
SIZES = {'S': dict(hidden_size=384, num_attention_heads=6, num_hidden_layers=12),
         'B': dict(hidden_size=768, num_attention_heads=12, num_hidden_layers=12),
         'L': dict(hidden_size=1024, num_attention_heads=16, num_hidden_layers=24)}
# The paper's checkpoints: DINOv2-L/14 and CLIP-L/14 at 336 px, SigLIP2-L/16 and DINOv3-L/16 at 384 px (24x24 patches).
PATCH = {'dinov2': 14, 'clip': 14, 'siglip2': 16, 'dinov3': 16}
RESOLUTION = {'dinov2': 336, 'clip': 336, 'siglip2': 384, 'dinov3': 384}


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
  raise SystemExit(f'--family must be one of {", ".join(FAMILIES)}; got {family!r}')


def load_pair(family: str, size: str, image_size: int, dtype: str):
  """(transformers model in eval mode with SDPA, the same weights as a stitchjax Backbone)."""
  torch.manual_seed(0)
  model = hf_model(family, size, image_size, PATCH[family]).eval()
  model.config._attn_implementation = 'sdpa'
  with tempfile.TemporaryDirectory() as d:
    model.save_pretrained(d)
    bb = stitchjax.load_backbone(d, dtype=jnp.dtype(dtype))
  return model, bb


def cast_params(params, dtype: str):
  """Frozen weights cast once to the compute dtype (Dense/LayerNorm then skip the per-call cast)."""
  return jax.tree.map(lambda p: p.astype(dtype), params)


def forward_flops(cfg) -> float:
  """Forward FLOPs per image (a multiply-add is 2): patch embedding, blocks, and the MAP head if any."""
  t, d, m = cfg.num_tokens, cfg.dim, cfg.mlp_dim
  flops = 2 * cfg.num_patches * 3 * cfg.patch_size**2 * d
  mlp = (3 if cfg.mlp == 'gated' else 2) * d * m
  flops += cfg.depth * (2 * t * (4 * d * d + mlp) + 4 * t * t * d)
  if cfg.pool == 'map':
    flops += 2 * (2 * d * d + 2 * t * d * d + 2 * d * m) + 4 * t * d
  return float(flops)


def matmul_peak(dtype: str = 'bfloat16', n: int = 8192, rounds: int = 10) -> float:
  """Measured FLOP/s of one large square matmul on the default device: the MFU denominator."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  mm = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(mm(a, b))
  best = float('inf')
  for _ in range(rounds):
    start = time.perf_counter()
    jax.block_until_ready(mm(a, b))
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


def alternate(fns: dict, rounds: int) -> dict:
  """Median seconds per call of each function, run in alternating rounds after one warm-up call each."""
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def header() -> str:
  device = jax.devices()[0]
  return (f'# {datetime.date.today()} {platform.node()} device={device.platform}:{device.device_kind} '
          f'cores={len(os.sched_getaffinity(0))}/{os.cpu_count()} load={os.getloadavg()[0]:.1f} '
          f'jax={jax.__version__} torch={torch.__version__} transformers={T.__version__}')


def bench_family(family: str, args, peak: float | None) -> str:
  image_size = args.image_size or RESOLUTION[family]
  model, bb = load_pair(family, args.size, image_size, args.dtype)
  gpu = jax.default_backend() == 'gpu'
  torch_device = 'cuda' if gpu else 'cpu'
  torch_dtype = getattr(torch, args.dtype)
  model = model.to(torch_device, torch_dtype)
  x = np.random.default_rng(0).standard_normal((args.batch, image_size, image_size, 3)).astype(np.float32)
  x_jax = jax.device_put(x)
  x_torch = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(torch_device, torch_dtype)
  params = cast_params(bb.params, args.dtype) if args.dtype != 'float32' else bb.params
  forward = jax.jit(bb.forward)

  def run_jax():
    jax.block_until_ready(forward(params, x_jax))

  def run_torch():
    with torch.inference_mode():
      model(x_torch)
    if gpu:
      torch.cuda.synchronize()

  t = alternate({'stitchjax': run_jax, 'transformers': run_torch}, args.rounds)
  ours, theirs = args.batch / t['stitchjax'], args.batch / t['transformers']
  name = f'{family} {args.size}/{PATCH[family]} @{image_size}'
  row = f'| {name} | {args.batch} | {args.dtype} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x |'
  if peak:
    flops = forward_flops(bb.config)
    row += f' {100 * flops * ours / peak:.0f}% | {100 * flops * theirs / peak:.0f}% |'
  del model
  if gpu:
    torch.cuda.empty_cache()
  return row


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--family', default='dinov2', help=f'one of {", ".join(FAMILIES)}, a comma list, or "all"')
  p.add_argument('--size', default='B', choices=sorted(SIZES))
  p.add_argument('--image-size', type=int, default=None,
                 help="default: the paper's resolution (336 for DINOv2/CLIP, 384 for SigLIP2/DINOv3)")
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  p.add_argument('--rounds', type=int, default=5, help='timed rounds per side, alternating')
  p.add_argument('--cores', type=int, default=None, help='pin the process (both runtimes) to this many cores')
  p.add_argument('--cpu-score-bytes', type=int, default=None,
                 help='CPU attention: score bytes per call (stitchjax.vit.CPU_SCORE_BYTES); 0: all heads in one call')
  args = p.parse_args()
  if args.cpu_score_bytes is not None:
    stitchjax.vit.CPU_SCORE_BYTES = args.cpu_score_bytes or 2**62
  families = FAMILIES if args.family == 'all' else tuple(args.family.split(','))
  if args.cores:
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
    torch.set_num_threads(args.cores)
  gpu = jax.default_backend() == 'gpu'
  peak = matmul_peak('bfloat16') if gpu else None
  print(header())
  print(f'# median of {args.rounds} alternating rounds; ratio = stitchjax / transformers (SDPA); '
        f'CPU attention score bytes per call: {stitchjax.vit.CPU_SCORE_BYTES}'
        + (f'; MFU over a measured bf16 matmul peak of {peak / 1e12:.0f} TFLOP/s' if peak else ''))
  cols = '| model | batch | dtype | stitchjax img/s | transformers img/s | ratio |' + (' MFU stitchjax | MFU transformers |' if peak else '')
  print(cols)
  print('|' + '---|' * (cols.count('|') - 1))
  for family in families:
    print(bench_family(family, args, peak), flush=True)


if __name__ == '__main__':
  main()
