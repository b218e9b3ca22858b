"""VFM Stitch Tree cost: latency and memory of Full against VST-n, same inputs, same run (paper B.5.1).

    python benchmarks/vst.py --backbones mini --batch 256                 # the mini-VFMs, CPU
    python benchmarks/vst.py --backbones B --batch 8 --rounds 3           # ViT-B/16 @224, random weights
    python benchmarks/vst.py --backbones L --batch 64 --dtype bfloat16    # ViT-L/14 @336, on a GPU

Variants, each one jitted inference function with its parameters as arguments:
`single` (the trunk alone to L_out), `full` (every backbone alone: tree.full), and
`vst-n` (tree.apply) for each n. Every backbone gets the same images. By default n
takes the paper's points 6, 14, 22 of L_out = 23 scaled to the backbones' L_out.

Theory is Table 13: blocks run beyond the trunk alone. Latency: median over rounds that
alternate the variants (machine noise hits all alike); extra latency is over `single`.
Memory: XLA's buffer assignment of the compiled function (`memory_analysis()`):
arguments (the parameters the variant holds, plus the images), temporaries (activations),
and their total with the outputs, an upper bound on what XLA holds at once. It is what
XLA allocates for the function, not the process's RSS (no runtime, no allocator slack).
"""
import argparse
import datetime
import functools
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from stitchjax import backbone, config_lib, tree, vit

SIZES = {'B': dict(depth=12, dim=768, heads=12, mlp_dim=3072, patch_size=16, image_size=224),
         'L': dict(depth=24, dim=1024, heads=16, mlp_dim=4096, patch_size=14, image_size=336)}
FAMILIES = ('clip', 'dinov2', 'siglip', 'dinov3')  # MoF-LLaVA's pair first, then Cambrian-1's others
PAPER_POINTS = (6, 14, 22)  # of L_out = 23


def random_backbone(family: str, size: str, image_size: int | None, dtype: str, seed: int):
  """The family's layout at this size, seeded random weights (this measures cost only)."""
  cfg = vit.ViTConfig(**(backbone.INIT_LAYOUTS[family] | SIZES[size]
                         | ({'image_size': image_size} if image_size else {}) | {'dtype': dtype}))
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(functools.partial(vit.init_params, cfg), jax.random.key(0))  # flax's eager init is slow
  return cfg, jax.tree.map(lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape, np.float32)), shapes)


def backbones(args) -> dict:
  if args.backbones == 'mini':
    # The trunk is siglip_mini, as in configs/vst.py.
    return {n: (bb.config, bb.params) for n in ('siglip_mini', 'dino_mini')
            for bb in [backbone.load_backbone(config_lib.MINI_VFMS[n]['path'], dtype=jnp.dtype(args.dtype))]}
  return {f: random_backbone(f, args.backbones, args.image_size, args.dtype, i)
          for i, f in enumerate(FAMILIES[:args.k])}


def variants(bbs: dict, layers, out_layer, stitch_layer: str, images) -> dict:
  """name -> (jitted function of (params, images), its arguments, the tree it counts blocks with)."""
  names = tuple(bbs)
  configs = tuple(c for c, _ in bbs.values())
  params = {n: p for n, (_, p) in bbs.items()}
  mof = len({c.dim for c in configs}) == 1
  base = tree.StitchTree(names, configs, layers[0], out_layer, stitch_layer, mof=mof)
  trunk, stop = configs[0], base.out_layers[0]
  single = jax.jit(lambda p, x: vit.blocks(trunk, p, vit.embed(trunk, p, x), 0, stop))
  out = {'single': (single, (tree.span(params[names[0]], 0, stop, embed=True), images), base),
         'full': (jax.jit(functools.partial(tree.full, base)),
                  (tree.full_params(base, params), {n: images for n in names}), base)}
  for n in layers:
    t = tree.StitchTree(names, configs, n, out_layer, stitch_layer, mof=mof)
    stitches = tree.init_stitches(t, params[names[0]], jax.random.key(n))
    out[f'vst-{n}'] = (jax.jit(functools.partial(tree.apply, t)), (tree.tree_params(t, params, stitches), images), t)
  return out


def memory(fn, args) -> dict:
  """XLA's compiled buffer assignment in MiB: arguments, temporaries, and their total with the outputs."""
  m = fn.lower(*args).compile().memory_analysis()
  total = m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
  return {k: v / 2**20 for k, v in (('args', m.argument_size_in_bytes), ('temp', m.temp_size_in_bytes),
                                    ('total', total))}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--backbones', default='mini', choices=['mini', *SIZES])
  p.add_argument('--k', type=int, default=2, help='backbones in the tree (random backbones: 2 to 4)')
  p.add_argument('--layers', default='', help='VST-n points, comma-separated; default: the paper\'s 6/14/22 of 23, scaled')
  p.add_argument('--out-layer', type=int, default=None, help='L_out; default: the penultimate block')
  p.add_argument('--image-size', type=int, default=None)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  p.add_argument('--stitch-layer', default='mlp', choices=['linear', 'mlp', 'lora'])
  p.add_argument('--rounds', type=int, default=5, help='timed rounds per variant, alternating')
  args = p.parse_args()
  if not 2 <= args.k <= len(FAMILIES):
    raise SystemExit(f'--k={args.k} must be in 2..{len(FAMILIES)}')
  bbs = backbones(args)
  trunk = next(iter(bbs.values()))[0]
  out_layer = args.out_layer or trunk.depth - 1
  layers = ([int(n) for n in args.layers.split(',')] if args.layers
            else sorted({min(out_layer - 1, max(1, round(f * out_layer / 23))) for f in PAPER_POINTS}))
  images = jax.device_put(np.random.default_rng(0).standard_normal(
      (args.batch, trunk.image_size, trunk.image_size, 3)).astype(np.float32))
  runs = variants(bbs, layers, args.out_layer, args.stitch_layer, images)
  mem = {name: memory(fn, a) for name, (fn, a, _) in runs.items()}
  for fn, a, _ in runs.values():
    jax.block_until_ready(fn(*a))  # compile and warm up
  times = {name: [] for name in runs}
  for _ in range(args.rounds):
    for name, (fn, a, _) in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*a))
      times[name].append(time.perf_counter() - start)
  ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
  print(f'# {datetime.date.today()} {platform.node()} device={jax.devices()[0].device_kind} cpus={os.cpu_count()} '
        f'jax={jax.__version__}')
  print(f'# backbones={args.backbones} ({", ".join(bbs)}) k={len(bbs)} depth={trunk.depth} dim={trunk.dim} '
        f'image={trunk.image_size} batch={args.batch} {args.dtype} stitch={args.stitch_layer}; '
        f'median of {args.rounds} alternating rounds; memory: XLA memory_analysis()')
  print('| variant | blocks | extra (theory, Table 13) | latency ms | extra latency | args MiB | temp MiB | '
        'total MiB | extra total |')
  print('|---|---|---|---|---|---|---|---|---|')
  for name, (_, _, t) in runs.items():
    counts = tree.block_counts(t)
    blocks = counts['vst'] if name.startswith('vst') else counts[name]
    extra = lambda a, b: f'{100 * (a / b - 1):+.1f}%'
    print(f"| {name} | {blocks} | {extra(blocks, counts['single'])} | {ms[name]:.1f} | {extra(ms[name], ms['single'])} "
          f"| {mem[name]['args']:.1f} | {mem[name]['temp']:.1f} | {mem[name]['total']:.1f} "
          f"| {extra(mem[name]['total'], mem['single']['total'])} |")


if __name__ == '__main__':
  main()
