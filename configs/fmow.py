"""fMoW-RGB, the paper's class-balanced subset (230 train / 26 test per class, 62 classes).

    python run.py --config configs/fmow.py --config.data.root=/data/fmow-rgb \
        --config.backbones.dinov2.path=/ckpt/dinov2-large --config.backbones.siglip2.path=/ckpt/siglip2-large-patch16-384
"""
from stitchjax import config_lib


def get_config():
  return config_lib.stitching('workdir/fmow', dict(kind='fmow', root='data/fmow-rgb', train_per_class=230,
                                                   test_per_class=26, val_fraction=0.1, seed=0))
