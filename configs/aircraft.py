"""FGVC-Aircraft 2013b, the official variant trainval / test split.

    python run.py --config configs/aircraft.py --config.data.root=/data/fgvc-aircraft-2013b
"""
from stitchjax import config_lib


def get_config():
  return config_lib.stitching('workdir/aircraft', dict(kind='aircraft', root='data/fgvc-aircraft-2013b',
                                                       val_fraction=0.1, seed=0))
