"""What a stitching config would run, checked and costed before anything is computed (the plan job,
stitchjax/jobs/plan.py).

It reads each backbone's config, never its weights (backbone.describe), checks the stitch
layers against every backbone's depth, lists each cell as done, partial or pending in the
workdir, counts the training units (a stage of a cell at one learning rate) left to train,
and estimates the feature cache's size on disk from the split sizes and token shapes.
"""
import dataclasses
import pathlib

from stitchjax import backbone, cells, data, vit
from stitchjax.records import Cell
from convert.common import CheckpointError

CACHE_BYTES_PER_VALUE = 2  # the feature cache stores bfloat16 (features.Cache)


@dataclasses.dataclass(frozen=True)
class Plan:
  cells: dict  # cell id -> 'done' | 'partial' | 'pending'
  units: int
  units_done: int
  configs: dict  # backbone name -> ViTConfig, or the reason it could not be read
  split_sizes: dict | str  # split -> examples, or why the data could not be read
  cache_bytes: int | None
  scout: dict | None  # scout_cost: the scout's work against the full grid's, where configs and data are known


def describe(name: str, spec) -> vit.ViTConfig:
  """The configured backbone's architecture, read from its config (the seeded 'init:' layouts included)."""
  path = str(spec.path)
  if path.startswith('init:'):
    return backbone.init_layout(name, path, spec.get('image_size'))
  return backbone.describe(path, image_size=spec.get('image_size'))


def units(cell: Cell) -> list[str]:
  """The training units of a cell as protocol.Runner names them (ffm_tlt shares its ffm cell's matching)."""
  if cell.method == 'lp':
    return [cell.id]
  if cell.method in ('lfm', 'ffm'):
    return [f'{cell.id}/match', f'{cell.id}/probe']
  if cell.method == 'tlt':
    return [f'{cell.id}/tlt']
  return [f'{dataclasses.replace(cell, method="ffm").id}/match', f'{cell.id}/tlt']


def cache_bytes(configs: dict, layers: list[int], split_sizes: dict) -> int:
  """Every split's tokens at each stitch layer and after the final norm, plus the pooled features."""
  total = 0
  for cfg in configs.values():
    per_example = (len(layers) + 1) * cfg.num_tokens * cfg.dim + (cfg.dim if cfg.pool != 'none' else 0)
    total += per_example * sum(split_sizes.values()) * CACHE_BYTES_PER_VALUE
  return total


def scout_cost(configs: dict, routes: list, split_sizes: dict, subsample: int, epochs: int) -> dict:
  """The scout's work and the full FFM→TLT grid's at every layer of every route, in image-block passes (an
  image through one block, forward; a backward pass counted as two): {'scout', 'grid', 'ratio'}.

  Scout: each backbone twice over the fits' subsample and once over val, each route's suffix from every
  layer over both. Grid: the features over every split, then per route and layer two stages (FFM, TLT) of
  `epochs` epochs (early stopping can only shorten them), each a forward and backward pass of the target
  suffix over train and a forward pass over val, and the test pass; one learning rate.
  """
  train, val, test = (split_sizes[s] for s in ('train', 'val', 'test'))
  fits = min(subsample, train)
  suffix = lambda route: sum(configs[route[1]].depth - n for n in range(1, min(configs[b].depth for b in route)))
  backbones = {b for route in routes for b in route}
  scout = sum(configs[b].depth * (2 * fits + val) for b in backbones) + sum(suffix(r) * (fits + val) for r in routes)
  grid = sum(configs[b].depth * (train + val + test) for b in backbones) + sum(
      suffix(r) * (2 * epochs * (3 * train + val) + test) for r in routes)
  return {'scout': scout, 'grid': grid, 'ratio': scout / grid}


def make(config) -> Plan:
  cells.validate(config)
  used = list(dict.fromkeys(b for pair in cells.pairs(config) for b in pair))
  configs = {}
  for name in used:
    try:
      configs[name] = describe(name, config.backbones[name])
    except CheckpointError as e:
      configs[name] = str(e)
  cells.validate(config, {n: c for n, c in configs.items() if isinstance(c, vit.ViTConfig)})
  try:
    splits = data.load(config.data).splits
    split_sizes = {name: len(split) for name, split in splits.items()}
  except Exception as e:  # the data is often not on the machine that plans: say why, plan the rest
    split_sizes = f'{type(e).__name__}: {e}'
  layers = cells.all_layers(config)  # None: the scout has yet to choose them (layers='scout:K')
  known = all(isinstance(c, vit.ViTConfig) for c in configs.values()) and isinstance(split_sizes, dict)
  work = pathlib.Path(config.workdir) / 'cells'
  lrs = cells.typed_list(config, 'train.lrs', float)
  status, all_units = {}, set()
  for cell in cells.expand(config) if layers is not None else []:
    if (work / cell.id / 'result.json').exists():
      status[cell.id] = 'done'
    else:
      status[cell.id] = 'partial' if any((work / u).exists() for u in units(cell)) else 'pending'
    all_units |= {(u, lr) for u in units(cell) for lr in lrs}
  done = sum((work / u / f'lr_{lr:g}' / 'done.json').exists() for u, lr in all_units)
  return Plan(status, len(all_units), done, configs, split_sizes,
              cache_bytes(configs, layers, split_sizes) if known and layers is not None else None,
              scout_cost(configs, cells.routes(config), split_sizes, config.scout.subsample, config.train.epochs)
              if known else None)
