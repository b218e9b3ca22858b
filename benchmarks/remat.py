"""Training steps with and without rematerialising the target suffix, side by side in one process.

    python benchmarks/remat.py                      # the demo's mini-VFMs, then a ViT-S-sized pair
    python benchmarks/remat.py --pairs mini --rounds 20

Each configuration is the protocol's real step (`train.make_step` over `objectives.tlt_loss` or
`ffm_loss`, AdamW, an MLP stitch) on one batch of cached-feature-shaped inputs. The two settings
alternate round by round and each reports its median step and its first call (compilation plus
one step). `mini`: dino_mini -> siglip_mini, the demo's pair, batch 64, stitched at 2, 4 and 6 of
8. `S`: random DINOv2 -> SigLIP layouts at ViT-S width (384, 12 blocks) at 224 px, batch 8.
"""
import argparse
import dataclasses
import functools
import statistics
import time

import jax
import numpy as np

from stitchjax import backbone, config_lib, objectives, stitch_layers, tasks, train, vit
from stitchjax import model as model_lib

LOSSES = {'tlt': objectives.tlt_loss, 'ffm': objectives.ffm_loss}


def pair(name: str):
  if name == 'mini':
    return [backbone.load_backbone(s['path'], image_size=s['image_size']) for s in config_lib.MINI_VFMS.values()]
  wide = dict(dim=384, heads=6, mlp_dim=1536, depth=12)
  return [backbone.Backbone(cfg, vit.init_params(cfg, jax.random.key(0)), None) for cfg in
          (dataclasses.replace(backbone.init_layout(f, f'init:{f}', 224), **wide) for f in ('dinov2', 'siglip'))]


def inputs(source, target, layer: int, batch: int, method: str):
  """A step's arguments: (trainable, optimizer state, frozen, batch, hyperparameters)."""
  spec = stitch_layers.StitchSpec('mlp', source.config, target.config, layer)
  trainable = {'stitch': stitch_layers.init(spec, jax.random.key(0))}
  if method == 'tlt':
    trainable['head'] = tasks.head_init(target.config.dim, 10)
  rng = np.random.default_rng(0)
  data = {'source': rng.normal(size=(batch, source.config.num_tokens, source.config.dim)).astype(np.float32),
          'target_final': rng.normal(size=(batch, target.config.num_tokens, target.config.dim)).astype(np.float32),
          'label': rng.integers(0, 10, batch).astype(np.int32), 'mask': np.ones(batch, np.float32)}
  hyper = train.hyperparameters(1e-3, 1e-4)
  opt = train._adamw(hyper).init(trainable)
  return spec, jax.device_put((trainable, opt, {'target': target.params}, data, hyper))


def measure(spec, args, method: str, rounds: int) -> dict:
  steps, firsts = {}, {}
  for remat in (False, True):
    steps[remat] = train.make_step(functools.partial(LOSSES[method], model_lib.Stitched(spec, remat=remat)))
    started = time.perf_counter()
    jax.block_until_ready(steps[remat](*args))
    firsts[remat] = time.perf_counter() - started
  times = {False: [], True: []}
  for _ in range(rounds):
    for remat in (False, True):
      started = time.perf_counter()
      jax.block_until_ready(steps[remat](*args))
      times[remat].append(time.perf_counter() - started)
  return {remat: (1e3 * statistics.median(times[remat]), firsts[remat]) for remat in (False, True)}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--pairs', default='mini,S')
  p.add_argument('--methods', default='tlt,ffm')
  p.add_argument('--rounds', type=int, default=10)
  args = p.parse_args()
  print(f'jax {jax.__version__}, {jax.devices()[0].device_kind}\n')
  print('| pair | batch | layer | method | step, kept | step, remat | ratio | first call, kept | first call, remat |')
  print('|---|---|---|---|---|---|---|---|---|')
  for name in args.pairs.split(','):
    source, target = pair(name)
    batch, layers = (64, (2, 4, 6)) if name == 'mini' else (8, (2,))
    for layer in layers:
      for method in args.methods.split(','):
        spec, step_args = inputs(source, target, layer, batch, method)
        r = measure(spec, step_args, method, args.rounds)
        print(f'| {name} | {batch} | {layer} | {method} | {r[False][0]:.0f} ms | {r[True][0]:.0f} ms | '
              f'{r[False][0] / r[True][0]:.2f}x | {r[False][1]:.1f} s | {r[True][1]:.1f} s |', flush=True)


if __name__ == '__main__':
  main()
