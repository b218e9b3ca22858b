"""Job 'backbones': load every configured backbone, export it to orbax, reload the export,
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

from stitchjax import atomic, backbone, records


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


def run(config):
  workdir = pathlib.Path(config.workdir)
  (workdir / 'backbones').mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(config.seed)
  results = []
  for name, spec in tqdm(config.backbones.items(), desc='backbones', unit='backbone'):
    export = workdir / 'backbones' / name
    backbone.save_backbone(backbone.configured(name, spec, config.seed), export, overwrite=True)
    bb = backbone.load_backbone(export)
    # Noise images: this job checks the machinery, so it needs no dataset.
    images = rng.integers(0, 256, (config.num_images, 160, 200, 3), dtype=np.uint8)
    c = bb.config
    results.append({'name': name, 'path': str(spec.path), 'export': str(export), 'family': c.family, 'depth': c.depth,
                    'dim': c.dim, 'patch_size': c.patch_size, 'image_size': c.image_size,
                    'num_prefix_tokens': c.num_prefix_tokens, 'random_init': str(spec.path).startswith('init:'),
                    **_inspect(bb, images, config.batch_size)})
  atomic.write_text(workdir / 'backbones.json', json.dumps(results, indent=2))
  table = records.table(['backbone', 'family', 'depth', 'dim', 'image', 'prefix tokens', 'split err', 'img/s',
                         'random init'],
                        [[r['name'], r['family'], r['depth'], r['dim'], r['image_size'], r['num_prefix_tokens'],
                          f"{r['max_split_rel_err']:.1e}", r['images_per_s'], 'yes' if r['random_init'] else 'no']
                         for r in results])
  atomic.write_text(workdir / 'backbones.md', table)
  print(table, end='')
  print(f'\nwrote {workdir / "backbones.json"} and exports under {workdir / "backbones"}')
