"""Job 'plan': a stitching config checked against the backbones' configs and the workdir, and costed,
without computing anything (stitchjax/plan.py).

    python run.py --config configs/fmow.py --config.job=plan
"""
import pathlib

from stitchjax import plan as plan_lib
from stitchjax import cells, vit


def run(config) -> plan_lib.Plan:
  plan = plan_lib.make(config)
  for name, cfg in plan.configs.items():
    print(f'{name}: ' + (f'{cfg.family}, depth {cfg.depth}, dim {cfg.dim}, {cfg.num_tokens} tokens at '
                         f'{cfg.image_size} px' if isinstance(cfg, vit.ViTConfig) else f'not read ({cfg})'))
  if not plan.cells:
    print(f'cells: not chosen yet: config.layers={config.layers!r} takes each pair\'s best layers from the scout '
          '(--config.job=scout; the stitch job runs it first)')
  width = max(map(len, plan.cells), default=0)
  for cell, status in plan.cells.items():
    print(f'{cell:<{width}}  {status}')
  count = {s: sum(v == s for v in plan.cells.values()) for s in ('done', 'partial', 'pending')}
  print(f'{len(plan.cells)} cells ({count["done"]} done, {count["partial"]} partial, {count["pending"]} pending); '
        f'{plan.units} training units over {len(cells.typed_list(config, "train.lrs", float))} learning rates, '
        f'{plan.units - plan.units_done} left')
  if isinstance(plan.split_sizes, str):
    print(f'data: not readable here ({plan.split_sizes}); feature cache size unknown')
  else:
    print(f'data: {", ".join(f"{n} {k}" for n, k in plan.split_sizes.items())} examples')
  if plan.cache_bytes is not None:
    cache = config.get('cache_dir') or pathlib.Path(config.workdir) / 'cache'
    print(f'feature cache: about {plan.cache_bytes / 2**30:.2f} GiB in {cache}')
  if plan.scout is not None:
    print(f'scout (--config.job=scout): {plan.scout["scout"]:.3g} image-block passes, {100 * plan.scout["ratio"]:.1f}% '
          f'of the FFM→TLT protocol at every layer of every route ({plan.scout["grid"]:.3g}, '
          f'{config.train.epochs} epochs per stage, one learning rate)')
  return plan
