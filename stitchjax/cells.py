"""A stitching config as cells, one per (source, target, layer, method, stitch layer), and its checks.

- `lp`: a linear probe of each backbone alone (layer None);
- `lfm` / `ffm`: the stitch trained by feature matching, then probed;
- `tlt`: stitch and head trained with the task's loss;
- `ffm_tlt`: `tlt` from the `ffm` stitch of the same pair, layer and stitch layer.

Every pair's backbones also get self-stitch cells (source = target). List-valued fields take
'2,6' or [2, 6]; a bad entry is named with its field. `layers='scout:K'` stitches each pair at the K
layers the scout ranks best (the workdir's scout.json), and each backbone's self-stitch at every layer
where one of its pairs is stitched, so that each stitch has its baselines (scouting.recommend).
"""
import json
import pathlib

import jax

from stitchjax import data as data_lib
from stitchjax import scouting
from stitchjax import stitch_layers as stitch_lib
from stitchjax import tasks, vit
from stitchjax.records import Cell

METHODS = ('lp', 'lfm', 'ffm', 'tlt', 'ffm_tlt')


def as_list(value) -> list:
  if isinstance(value, str):
    return [v for v in value.split(',') if v]
  return list(value) if isinstance(value, (list, tuple)) else [value]


def typed_list(config, field: str, kind: type) -> list:
  """A list-valued config field ('2,6' or [2, 6]) as `kind` values; a bad entry is named with its field."""
  value = config
  for part in field.split('.'):
    value = value[part]
  out = []
  for entry in as_list(value):
    try:
      out.append(kind(entry))
      if out[-1] != float(entry):  # int(2.5) would pass as 2
        raise ValueError
    except (TypeError, ValueError):
      raise ValueError(f'config.{field}: entry {entry!r} is not {"an integer" if kind is int else "a number"} '
                       f'(in {value!r})') from None
  return out


def pairs(config) -> list[tuple[str, str]]:
  out = []
  for p in as_list(config.pairs):
    pair = tuple(p.split(':')) if isinstance(p, str) else tuple(p)
    if len(pair) != 2:
      raise ValueError(f'pairs entry {p!r} is not a (source, target) pair')
    out.append(pair)
  return out


def routes(config) -> list[tuple[str, str]]:
  """(source, target) in run order: every backbone's self-stitch, then the pairs."""
  backbones = dict.fromkeys(b for pair in pairs(config) for b in pair)
  return list(dict.fromkeys([(b, b) for b in backbones] + pairs(config)))


SCOUT = 'scout:'


def scout_top(config) -> int | None:
  """K of layers='scout:K', else None."""
  value = config.layers
  if not (isinstance(value, str) and value.startswith(SCOUT)):
    return None
  k = value.removeprefix(SCOUT)
  if not (k.isdigit() and int(k) > 0):
    raise ValueError(f'config.layers={value!r}: expected {SCOUT}K with K a positive integer (the layers per pair)')
  return int(k)


def scout_pending(config) -> bool:
  """layers='scout:K' and no scout.json in the workdir yet: the scout has to choose the layers first."""
  return scout_top(config) is not None and not (pathlib.Path(config.workdir) / 'scout.json').exists()


def route_layers(config) -> dict[tuple[str, str], list[int]]:
  """The stitch layers of every route: config.layers, or with 'scout:K' the scout's choice (module docstring)."""
  k = scout_top(config)
  if k is None:
    layers = typed_list(config, 'layers', int)
    return {route: layers for route in routes(config)}
  path = pathlib.Path(config.workdir) / 'scout.json'
  if not path.exists():
    raise FileNotFoundError(f'config.layers={config.layers!r} reads {path}, which is missing: run the scout first '
                            '(--config.job=scout; the stitch job runs it itself)')
  saved = json.loads(path.read_text())
  try:
    chosen = scouting.recommend(saved['records'], saved['rank_by'], k, routes(config))
  except ValueError as e:
    raise ValueError(f'{path}: {e}') from None
  return {route: sorted(layers) for route, layers in chosen.items()}


def all_layers(config) -> tuple[int, ...] | None:
  """Every route's layers together (what the feature cache holds); None while the scout has yet to choose them."""
  if scout_pending(config):
    return None
  return tuple(sorted({l for layers in route_layers(config).values() for l in layers}))


def expand(config) -> list[Cell]:
  """Cells in run order: probes, then per route (self-stitches first) layer x stitch layer x method."""
  methods = as_list(config.methods)
  backbones = list(dict.fromkeys(b for pair in pairs(config) for b in pair))
  cells = [Cell(b, b, None, 'lp', None) for b in backbones] if 'lp' in methods else []
  stitched = [m for m in methods if m != 'lp']
  for (source, target), layers in route_layers(config).items():
    for layer in layers:
      for kind in as_list(config.stitch_layer):
        cells += [Cell(source, target, int(layer), m, kind) for m in stitched]
  return list(dict.fromkeys(cells))


def validate(config, backbones: dict | None = None) -> None:
  """Config errors before any compute, each naming its field. backbones: name -> Backbone or ViTConfig."""
  validate_training(config)
  methods = as_list(config.methods)
  for m in methods:
    if m not in METHODS:
      raise ValueError(f'config.methods: unknown method {m!r}; expected some of {METHODS}')
  for kind in as_list(config.stitch_layer):
    if kind not in stitch_lib.STITCH_LAYERS:
      raise ValueError(f'config.stitch_layer: unknown stitch layer {kind!r}; expected {stitch_lib.STITCH_LAYERS}')
  for source, target in pairs(config):
    for name in (source, target):
      if name not in config.backbones:
        raise ValueError(f'config.pairs: backbone {name!r} is not in config.backbones ({sorted(config.backbones)})')
  validate_task(config)
  if scout_top(config) is not None:
    return  # the scout's layers are each route's own
  layers = typed_list(config, 'layers', int)
  for layer in layers:
    for name, bb in (backbones or {}).items():
      depth = bb.depth if isinstance(bb, vit.ViTConfig) else bb.config.depth
      if not 1 <= layer <= depth - 1:
        raise ValueError(f'config.layers: layer {layer} is outside 1..{depth - 1} for backbone {name!r}')


def validate_training(config) -> None:
  """The training fields (config.train, eval_batch_size), each error naming its field."""
  t = config.train
  for field in ('epochs', 'patience'):
    if not t[field] > 0:
      raise ValueError(f'config.train.{field}={t[field]} must be positive')
  for lr in typed_list(config, 'train.lrs', float):
    if not lr > 0:
      raise ValueError(f'config.train.lrs: learning rate {lr:g} must be positive')
  for method, size in t.batch_size.items():
    if not size > 0:
      raise ValueError(f'config.train.batch_size.{method}={size} must be positive')
    if size % jax.device_count():
      raise ValueError(f'config.train.batch_size.{method}={size} is not divisible by the {jax.device_count()} devices')
  size = config.get('eval_batch_size', 0)
  if size and (size < 0 or size % jax.device_count()):
    raise ValueError(f'config.eval_batch_size={size} must be positive and divisible by the {jax.device_count()} '
                     'devices (0: the training batch size)')


def validate_task(config) -> None:
  """config.task (and label_size) against the kind of config.data."""
  task = tasks.from_config(config).name
  data_task = data_lib.task_of(config.data.get('kind'))
  if task != data_task:
    raise ValueError(f'config.task={task!r}, but config.data.kind={config.data.get("kind")!r} is a {data_task} '
                     f'dataset; segmentation kinds are {sorted(data_lib.PIXEL_CLASSES)}')
