"""iNaturalist 2021 subset: species of Sphingidae, Pieridae and Pyralidae, 200 train / 50 test each.

    python run.py --config configs/inat.py --config.data.root=/data/inat2021
"""
from stitchjax import config_lib


def get_config():
  return config_lib.stitching('workdir/inat', dict(kind='inat', root='data/inat2021',
                                                   families=('Sphingidae', 'Pieridae', 'Pyralidae'),
                                                   train_per_class=200, test_per_class=50, val_fraction=0.1, seed=0))
