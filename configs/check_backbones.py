"""Load backbones, export them, and check the split-at-any-layer contract at every stitch point.

The default backbones are *seeded random initialisations* of the DINOv2 and SigLIP
layouts ('init:<family>'): they exercise conversion, export and splitting, and say
nothing about any real VFM. Point `backbones.<name>.path` at a transformers directory,
a torch-hub .pth, a big_vision .npz or a stitchjax export to check real checkpoints:

    python run.py --config configs/check_backbones.py --config.backbones.dinov2_init.path=/ckpt/dinov2-large
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.job = 'backbones'
  c.workdir = 'workdir/check_backbones'
  c.seed = 0
  c.backbones = ml_collections.ConfigDict({
      'dinov2_init': {'path': 'init:dinov2', 'image_size': 112},
      'siglip_init': {'path': 'init:siglip', 'image_size': 112},
  })
  c.batch_size = 8
  c.num_images = 32
  return c
