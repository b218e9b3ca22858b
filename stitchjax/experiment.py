"""Jobs that `run.py` runs from a config.

`stitch`: the paper's stitching protocol (stitchjax/protocol.py), then tables, plots and the
analyses (stitchjax/analysis.py); `analysis_only=True` skips to the analyses.
`plan`: check a stitching config against the backbones' configs and the workdir, and cost it, without
computing anything (stitchjax/plan.py).
`pretrain`: train the mini-VFMs of the demo and write their exports (stitchjax/pretrain.py).

`backbones`: load every configured backbone, export it to orbax, reload the export,
and check the stitching contract on it: splitting the blocks at every layer n and
composing [0, n) with [n, depth) gives the uninterrupted forward. It reports per-layer
token norms (where representations change scale, which matters for stitch layers)
and forward throughput.
"""
import json
import pathlib
import time

import jax
import numpy as np
from tqdm import tqdm

from stitchjax import atomic, backbone, plan, preprocess, pretrain, tree, vit

def stitch_job(config):
  """The paper's protocol over every cell of the config (stitchjax/protocol.py), then its analyses
  (stitchjax/analysis.py); with `analysis_only`, the analyses alone, from the workdir."""
  from stitchjax import analysis, distributed, protocol, report
  if not config.get('analysis_only'):
    records = protocol.run(config)
    if not distributed.is_main():  # process 0 writes and reports (stitchjax/distributed.py)
      return
    print(report.write(config.workdir, config.get('report_context')))
    print(f'{len(records)} records in {pathlib.Path(config.workdir) / "results.json"} (and results.csv); '
          f'tables in tables.md, plots accuracy_*.png')
  print(analysis.write(config.workdir))


def run(config):
  jobs = {'backbones': backbones_job, 'stitch': stitch_job, 'plan': plan.run, 'pretrain': pretrain.run,
          'vst': tree.run}
  if config.job not in jobs:
    raise ValueError(f'config.job={config.job!r} is not one of {sorted(jobs)}')
  jobs[config.job](config)


def load(name: str, spec, seed: int) -> backbone.Backbone:
  """A configured backbone: any path load_backbone accepts, or 'init:<family>' for a seeded random layout."""
  path = str(spec.path)
  if not path.startswith('init:'):
    return backbone.load_backbone(path, image_size=spec.get('image_size'))
  cfg = backbone.init_layout(name, path, spec.get('image_size'))
  return backbone.Backbone(cfg, vit.init_params(cfg, jax.random.key(seed)), preprocess.for_family(cfg.family, cfg.image_size))


def _inspect(bb: backbone.Backbone, images: np.ndarray, batch_size: int) -> dict:
  cfg, params = bb.config, bb.params
  norms = np.zeros(cfg.depth + 1)
  split_err = np.zeros(cfg.depth + 1)
  seconds = 0.0
  for i in range(0, len(images), batch_size):
    x = bb.preprocess(images[i:i + batch_size])
    start = time.perf_counter()
    jax.block_until_ready(bb.forward(params, x))
    seconds += time.perf_counter() - start if i else 0.0  # the first batch pays for compilation
    tokens = bb.embed(params, x)
    whole = np.asarray(bb.blocks(params, tokens, 0, cfg.depth))
    for n in range(cfg.depth + 1):
      prefix = bb.blocks(params, tokens, 0, n)
      norms[n] += float(np.linalg.norm(np.asarray(prefix), axis=-1).mean()) * len(x)
      split = np.asarray(bb.blocks(params, prefix, n, cfg.depth))
      split_err[n] = max(split_err[n], float(np.abs(split - whole).max() / np.abs(whole).max()))
  timed = len(images) - min(batch_size, len(images))
  return {'token_norm_per_layer': (norms / len(images)).round(4).tolist(),
          'max_split_rel_err': float(split_err.max()),
          'images_per_s': round(timed / seconds, 1) if seconds else None}


def backbones_job(config):
  workdir = pathlib.Path(config.workdir)
  (workdir / 'backbones').mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(config.seed)
  results = []
  for name, spec in tqdm(config.backbones.items(), desc='backbones', unit='backbone'):
    export = workdir / 'backbones' / name
    backbone.save_backbone(load(name, spec, config.seed), export, overwrite=True)
    bb = backbone.load_backbone(export)
    # Noise images: this job checks the machinery, so it needs no dataset.
    images = rng.integers(0, 256, (config.num_images, 160, 200, 3), dtype=np.uint8)
    c = bb.config
    results.append({'name': name, 'path': str(spec.path), 'export': str(export), 'family': c.family, 'depth': c.depth,
                    'dim': c.dim, 'patch_size': c.patch_size, 'image_size': c.image_size,
                    'num_prefix_tokens': c.num_prefix_tokens, 'random_init': str(spec.path).startswith('init:'),
                    **_inspect(bb, images, config.batch_size)})
  atomic.write_text(workdir / 'backbones.json', json.dumps(results, indent=2))
  lines = ['| backbone | family | depth | dim | image | prefix tokens | split err | img/s | random init |',
           '|---|---|---|---|---|---|---|---|---|']
  lines += [f"| {r['name']} | {r['family']} | {r['depth']} | {r['dim']} | {r['image_size']} | {r['num_prefix_tokens']} "
            f"| {r['max_split_rel_err']:.1e} | {r['images_per_s']} | {'yes' if r['random_init'] else 'no'} |"
            for r in results]
  atomic.write_text(workdir / 'backbones.md', '\n'.join(lines) + '\n')
  print('\n'.join(lines))
  print(f'\nwrote {workdir / "backbones.json"} and exports under {workdir / "backbones"}')
