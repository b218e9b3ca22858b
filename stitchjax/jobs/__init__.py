"""The jobs `run.py` runs, one module each, chosen by `config.job`:

- `stitch`: the paper's protocol, its tables, report and analyses (configs/demo.py, configs/fmow.py, ...);
- `plan`: what a stitching config would run, checked and costed, computing nothing;
- `vst`: the VFM Stitch Tree's accuracy against compute (configs/vst.py);
- `pretrain`: the mini-VFMs of the demo (configs/pretrain_mini.py);
- `backbones`: every configured backbone exported, reloaded and checked (configs/check_backbones.py);
- `scout`: every layer of every configured pair ranked in closed form before any training (docs/scout.md).

Jobs only compose; what they run lives in the library modules above them.
"""
from stitchjax.jobs import backbones, plan, pretrain, scout, stitch, vst

JOBS = {'backbones': backbones.run, 'plan': plan.run, 'pretrain': pretrain.run, 'scout': scout.run, 'stitch': stitch.run,
        'vst': vst.run}


def run(config):
  if config.job not in JOBS:
    raise ValueError(f'config.job={config.job!r} is not one of {sorted(JOBS)}')
  return JOBS[config.job](config)
