"""Job 'scout': every layer of every configured pair ranked before anything is trained (stitchjax/scouting.py).

    python run.py --config configs/demo.py --config.job=scout
    python run.py --config configs/fmow.py --config.layers=scout:3     # the protocol at each pair's 3 best

It loads the data and backbones as the stitch job does, in the same workdir and against the same identity,
measures every route (each pair both ways and each backbone's self-stitch) at every layer, and writes
scout.json, the scout's tables and plot (stitchjax/report.py) and its recommended layers. Where the workdir
holds the protocol's results at the scouted layers, it also checks the proxies against them
(stitchjax/agreement.py): scout_validation.json.
"""
import pathlib

from stitchjax import agreement, cells, distributed, protocol, report, scouting, workdir
from stitchjax.cells import typed_list


def run(config):
  measure(config)
  if distributed.is_main():
    print(report.write(config.workdir, config.get('report_context')))


def measure(config) -> list[dict]:
  """The scout's records, written to <workdir>/scout.json (and its validation where the workdir allows)."""
  cells.validate(config)
  s = config.scout
  if s.rank_by not in scouting.PROXIES:
    raise ValueError(f'config.scout.rank_by={s.rank_by!r} is not one of {sorted(scouting.PROXIES)}')
  if not (isinstance(s.subsample, int) and s.subsample > 0):
    raise ValueError(f'config.scout.subsample={s.subsample!r} must be a positive int (training images)')
  with workdir.session(config):
    r = protocol.runner(config)
    images = {split: scouting.Images(lambda idx, split=split: [r.data.splits[split].image(i) for i in idx],
                                  r.labels(split)) for split in ('train', 'val')}
    records = scouting.measure(r.backbones, cells.routes(config), images['train'].sample(s.subsample, config.seed),
                            images['val'], r.task, r.num_classes, ridge_strength=float(s.ridge),
                            probe_ridges=tuple(typed_list(config, 'scout.probe_ridges', float)),
                            batch_size=config.feature_batch_size)
    root = pathlib.Path(config.workdir)
    workdir.write_json(root / 'scout.json', {
        'rank_by': s.rank_by, 'subsample': min(s.subsample, len(images['train'])), 'ridge': s.ridge,
        'recommended': {f'{a}:{b}': layers for (a, b), layers in scouting.recommend(records, s.rank_by, s.top).items()},
        'records': records})
    if distributed.is_main():
      agreement.update(root)
  return records
