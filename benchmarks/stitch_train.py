"""Stitch-training speed and memory: FFM and TLT steps with the feature cache against recomputing everything.

    python benchmarks/stitch_train.py --size B --image-size 224 --batch 8 --steps 3           # CPU
    python benchmarks/stitch_train.py --size L --batch 128 --dtype bfloat16 --steps 10       # GPU (issue 7)
    python benchmarks/stitch_train.py --size L --batch 128 --dtype bfloat16 --compile-only   # memory, no run

A source -> target pair (default DINOv2 -> SigLIP2, random weights from the real
layouts) is stitched with a linear layer at layers 2, 14 and 22 of 24 (scaled to the
depth: 1, 7, 11 of 12). Each step is the real `train.make_step` (AdamW on the stitch,
and the head for TLT) on one batch; the frozen target suffix is differentiated only
for its activations. Two inputs per method:

- cached: the source tokens at layer n and the target's final tokens come from the
  feature cache (bf16 arrays, as `features.Cache` stores them);
- recompute: the step starts from images and runs the source prefix (and, for FFM,
  the whole target for its reference tokens) inside the step.

Reported per (method, layer): median step time of each, epoch time for an fMoW-sized
split (14,260 images) from the measured step, the measured speed-up, and the
theoretical one in blocks per step. A frozen block's backward computes only input
gradients, about one forward, so the suffix costs 2(N-n) forward blocks (3(N-n) with
remat), the source prefix n, and FFM's target reference N:

    ffm: (n + N + 2(N-n)) / 2(N-n)        tlt: (n + 2(N-n)) / 2(N-n)

Memory: XLA's buffer assignment for each compiled step (`memory_analysis()`: arguments
+ outputs + temporaries, on any device and with --compile-only on no data at all),
and on a GPU the device's `peak_bytes_in_use` after the steps (cumulative in a
process, so run one method per process for a clean figure: --methods, --layers).
The cache build (one pass of each backbone over a synthetic split through
`features.Cache`, timed, scaled to 14,260 images) and its size on disk close the run.
"""
import argparse
import dataclasses
import functools
import math
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import forward as fwd
from stitchjax import data as data_lib
from stitchjax import features, objectives, tasks, train, vit
from stitchjax import model as model_lib
from stitchjax import stitch_layers as stitch_lib

FMOW_TRAIN = 14_260
NUM_CLASSES = 62  # fMoW


def layers_for(depth: int) -> tuple[int, ...]:
  """The paper's stitch layers 2, 14, 22 of 24, scaled to this depth."""
  return tuple(sorted({max(1, min(depth - 1, round(n * depth / 24))) for n in (2, 14, 22)}))


def theoretical_speedup(method: str, n: int, depth: int, remat: bool) -> float:
  suffix = (3 if remat else 2) * (depth - n)
  recompute = n + suffix + (depth if method == 'ffm' else 0)
  return recompute / suffix


def losses(method: str, stitched: model_lib.Stitched, src_cfg: vit.ViTConfig):
  """(cached loss, recompute loss), both `loss(trainable, frozen, batch)`."""
  cached = functools.partial(objectives.ffm_loss if method == 'ffm' else objectives.tlt_loss, stitched)
  n, tgt = stitched.spec.layer, stitched.target

  def recompute(trainable, frozen, batch):
    source = vit.blocks(src_cfg, frozen['source'], vit.embed(src_cfg, frozen['source'], batch['source_images']), 0, n)
    inputs = {'source': source, 'label': batch['label'], 'mask': batch['mask']}
    if method == 'ffm':
      images = batch['target_images']  # the same images, preprocessed for the target
      reference = vit.blocks(tgt, frozen['target'], vit.embed(tgt, frozen['target'], images), 0, tgt.depth)
      inputs['target_final'] = vit.final(tgt, frozen['target'], reference)
    return cached(trainable, frozen, inputs)
  return cached, recompute


def make_batches(src_cfg, tgt_cfg, batch: int, abstract: bool):
  """Inputs for the cached and the recompute step (ShapeDtypeStructs when abstract)."""
  shapes = {'cached': {'source': ((batch, src_cfg.num_tokens, src_cfg.dim), jnp.bfloat16),
                       'target_final': ((batch, tgt_cfg.num_tokens, tgt_cfg.dim), jnp.bfloat16),
                       'label': ((batch,), jnp.int32), 'mask': ((batch,), jnp.float32)},
            'recompute': {'source_images': ((batch, src_cfg.image_size, src_cfg.image_size, 3), jnp.float32),
                          'target_images': ((batch, tgt_cfg.image_size, tgt_cfg.image_size, 3), jnp.float32),
                          'label': ((batch,), jnp.int32), 'mask': ((batch,), jnp.float32)}}
  if abstract:
    return {k: {n: jax.ShapeDtypeStruct(*s) for n, s in v.items()} for k, v in shapes.items()}
  rng = np.random.default_rng(0)
  out = {}
  for k, v in shapes.items():
    out[k] = {}
    for n, (shape, dtype) in v.items():
      if n == 'label':
        out[k][n] = rng.integers(0, NUM_CLASSES, shape).astype(np.int32)
      elif n == 'mask':
        out[k][n] = np.ones(shape, np.float32)
      else:
        out[k][n] = np.asarray(jnp.asarray(rng.standard_normal(shape, np.float32), dtype))
  return out


def memory_mib(compiled) -> float:
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes) / 2**20


def time_steps(step, state, frozen, batch, hyper, steps: int) -> float:
  """Median seconds per step; the loss is read back each step so that the step has finished."""
  *state, loss = step(*state, frozen, batch, hyper)
  float(loss)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    *state, loss = step(*state, frozen, batch, hyper)
    float(loss)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def cache_build(src, tgt, layers, batch: int, images: int) -> tuple[float, float]:
  """Seconds for one pass of each backbone over `images` synthetic images via features.Cache, and bytes on disk."""
  rng = np.random.default_rng(0)
  reader = data_lib.ArrayReader(rng.integers(0, 256, (images, 256, 256), dtype=np.uint8), ())
  split = data_lib.Split('image_folder', ('a',), reader, np.arange(images), np.zeros(images, np.int32))
  for warm_up in (True, False):  # the first pass compiles each span for this batch shape
    part = split.subset(np.arange(batch if warm_up else images))
    with tempfile.TemporaryDirectory() as d:
      cache = features.Cache(d)
      start = time.perf_counter()
      cache.tokens(src, 'source', part, 'train', layers=layers, batch_size=batch)
      cache.tokens(tgt, 'target', part, 'train', final=True, batch_size=batch)
      seconds = time.perf_counter() - start
  per_image_bytes = 2 * (len(layers) * src.config.num_tokens * src.config.dim + tgt.config.num_tokens * tgt.config.dim)
  return seconds, per_image_bytes


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--pair', default='dinov2,siglip2', help='source,target families')
  p.add_argument('--size', default='B', choices=sorted(fwd.SIZES))
  p.add_argument('--image-size', type=int, default=None, help="default: each family's paper resolution")
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  p.add_argument('--steps', type=int, default=3, help='timed steps per configuration (after one warm-up step)')
  p.add_argument('--methods', default='ffm,tlt')
  p.add_argument('--layers', default=None, help='comma list; default 2,14,22 scaled to the depth')
  p.add_argument('--remat', action='store_true', help='rematerialise the target suffix blocks in the backward pass')
  p.add_argument('--compile-only', action='store_true', help='memory analysis of the cached steps only, no run')
  p.add_argument('--cache-images', type=int, default=None, help='images in the cache-build pass (default 2 batches)')
  args = p.parse_args()
  src_family, tgt_family = args.pair.split(',')
  sizes = {f: args.image_size or fwd.RESOLUTION[f] for f in (src_family, tgt_family)}
  src = fwd.load_pair(src_family, args.size, sizes[src_family], args.dtype)[1]
  tgt = fwd.load_pair(tgt_family, args.size, sizes[tgt_family], args.dtype)[1]
  depth = tgt.config.depth
  layers = tuple(int(n) for n in args.layers.split(',')) if args.layers else layers_for(depth)
  tgt_cfg = dataclasses.replace(tgt.config, remat=args.remat)
  cast = (lambda t: fwd.cast_params(t, args.dtype)) if args.dtype != 'float32' else (lambda t: t)
  frozen = {'target': cast(tgt.params), 'source': cast(src.params)}
  gpu = jax.default_backend() == 'gpu'
  batches = make_batches(src.config, tgt_cfg, args.batch, abstract=args.compile_only)
  print(fwd.header())
  print(f'# {src_family} -> {tgt_family} {args.size} @{sizes[src_family]}/{sizes[tgt_family]}, linear stitch, batch {args.batch}, {args.dtype}, '
        f'remat={args.remat}, median of {args.steps} steps; epoch = {math.ceil(FMOW_TRAIN / args.batch)} steps '
        f'({FMOW_TRAIN} images); memory = XLA buffer assignment of the step'
        + (', peak = device peak_bytes_in_use so far in this process' if gpu else ''))
  if args.compile_only:
    print('| method | layer | cached step memory | recompute step memory |')
    print('|---|---|---|---|')
  else:
    print('| method | layer | cached step | recompute step | cached epoch | recompute epoch | speed-up | '
          'theoretical | of theoretical | cached memory | recompute memory |' + (' peak |' if gpu else ''))
    print('|' + '---|' * (11 + gpu))
  for method in args.methods.split(','):
    for n in layers:
      spec = stitch_lib.StitchSpec('linear', src.config, tgt_cfg, n, dtype=args.dtype)
      stitched = model_lib.Stitched(spec, remat=args.remat)
      trainable = {'stitch': stitch_lib.init(spec, jax.random.key(0))}
      if method == 'tlt':
        trainable['head'] = tasks.head_init(tgt_cfg.dim, NUM_CLASSES)
      hyper = train.hyperparameters(1e-3, 1e-4)
      state = (trainable, optax.adamw(1e-3).init(trainable))
      results = {}
      for mode, loss in zip(('cached', 'recompute'), losses(method, stitched, src.config)):
        # Each step gets only what it reads: no source weights with the cache, no reference tokens for TLT.
        inputs = {k: v for k, v in frozen.items() if mode == 'recompute' or k == 'target'}
        batch = {k: v for k, v in batches[mode].items() if method == 'ffm' or k not in ('target_final', 'target_images')}
        step = train.make_step(loss)
        compiled = step.lower(*state, inputs, batch, hyper).compile()
        results[mode] = {'memory': memory_mib(compiled)}
        if not args.compile_only:
          results[mode]['seconds'] = time_steps(compiled, state, inputs, batch, hyper, args.steps)
      if args.compile_only:
        print(f'| {method} | {n} | {results["cached"]["memory"]:.0f} MiB | {results["recompute"]["memory"]:.0f} MiB |',
              flush=True)
        continue
      c, r = results['cached']['seconds'], results['recompute']['seconds']
      epoch = math.ceil(FMOW_TRAIN / args.batch)
      measured, theory = r / c, theoretical_speedup(method, n, depth, args.remat)
      row = (f'| {method} | {n} | {1e3 * c:.0f} ms | {1e3 * r:.0f} ms | {epoch * c / 60:.1f} min | '
             f'{epoch * r / 60:.1f} min | {measured:.2f}x | {theory:.2f}x | {100 * measured / theory:.0f}% | '
             f'{results["cached"]["memory"]:.0f} MiB | {results["recompute"]["memory"]:.0f} MiB |')
      if gpu:
        row += f' {jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 2**30:.1f} GiB |'
      print(row, flush=True)
  if not args.compile_only:
    images = args.cache_images or 2 * args.batch
    seconds, per_image = cache_build(src, tgt, layers, args.batch, images)
    print(f'\ncache build ({src_family} layers {",".join(map(str, layers))} + {tgt_family} final, {images} images '
          f'measured): {seconds / images * 1e3:.0f} ms/image -> {seconds / images * FMOW_TRAIN / 60:.1f} min for '
          f'{FMOW_TRAIN} images; size on disk {per_image * FMOW_TRAIN / 2**30:.1f} GiB '
          f'({per_image / 2**20:.2f} MiB/image, bf16)')


if __name__ == '__main__':
  main()
