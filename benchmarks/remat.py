"""Training steps with and without rematerialising the target suffix, side by side in one process.

    python benchmarks/remat.py                      # the demo's mini-VFMs, then a ViT-S pair
    python benchmarks/remat.py --pairs mini --rounds 20

Each configuration is the protocol's real step on cached features (`train.make_step` over
`tlt_loss` or `ffm_loss`, AdamW, an MLP stitch, bf16 inputs as `features.Cache` stores them,
built by stitch_train.py). The two settings alternate round by round (forward.py's `alternate`);
each reports its median step and its first call (compilation plus one step). `mini`: dino_mini ->
siglip_mini, the demo's pair, batch 64, stitched at 2, 4 and 6 of 8. `S`: DINOv2 -> SigLIP2
layouts at ViT-S size (random weights) at 224 px, batch 8, stitched at 2 of 12.
"""
import argparse
import time

import jax

import forward as fwd
import stitch_train
from stitchjax import config_lib, stitch_layers, tasks, train
from stitchjax import backbone as backbone_lib
from stitchjax import model as model_lib


def pair(name: str) -> tuple:
  if name == 'mini':
    return tuple(backbone_lib.load_backbone(s['path'], image_size=s['image_size'])
                 for s in config_lib.MINI_VFMS.values())
  return tuple(fwd.load_pair(family, 'S', 224, 'float32')[1] for family in ('dinov2', 'siglip2'))


def steps(source, target, layer: int, batch: int, method: str) -> dict:
  """{remat: a call of that setting's step on one batch}; each call waits for its result."""
  spec = stitch_layers.StitchSpec('mlp', source.config, target.config, layer)
  trainable = {'stitch': stitch_layers.init(spec, jax.random.key(0))}
  if method == 'tlt':
    trainable['head'] = tasks.head_init(target.config.dim, stitch_train.NUM_CLASSES)
  data = stitch_train.make_batches(source.config, target.config, batch, abstract=False)['cached']
  if method == 'tlt':
    data.pop('target_final')
  hyper = train.hyperparameters(1e-3, 1e-4)
  args = jax.device_put((trainable, train._adamw(hyper).init(trainable), {'target': target.params}, data, hyper))
  calls = {}
  for remat in (False, True):
    loss = stitch_train.losses(method, model_lib.Stitched(spec, remat=remat), source.config)[0]
    step = train.make_step(loss)
    calls[remat] = lambda step=step: jax.block_until_ready(step(*args))
  return calls


def first_call(fn) -> float:
  started = time.perf_counter()
  fn()
  return time.perf_counter() - started


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--pairs', default='mini,S')
  p.add_argument('--methods', default='tlt,ffm')
  p.add_argument('--rounds', type=int, default=10)
  args = p.parse_args()
  print(fwd.header())
  print('| pair | batch | layer | method | step, kept | step, remat | ratio | first call, kept | first call, remat |')
  print('|---|---|---|---|---|---|---|---|---|')
  for name in args.pairs.split(','):
    source, target = pair(name)
    batch, layers = (64, (2, 4, 6)) if name == 'mini' else (8, (2,))
    for layer in layers:
      for method in args.methods.split(','):
        calls = steps(source, target, layer, batch, method)
        first = {remat: first_call(fn) for remat, fn in calls.items()}
        t = fwd.alternate(calls, args.rounds)
        print(f'| {name} | {batch} | {layer} | {method} | {1e3 * t[False]:.0f} ms | {1e3 * t[True]:.0f} ms | '
              f'{t[False] / t[True]:.2f}x | {first[False]:.1f} s | {first[True]:.1f} s |', flush=True)


if __name__ == '__main__':
  main()
