"""The embedded default job: load backbones, export them, and check every stitch point.

Until the project's own trained mini-VFMs land (issue 4), no real weights are
available offline, so the two backbones here are *seeded random initialisations*
of the DINOv2 and SigLIP layouts ('init:<family>'): they exercise conversion,
export and the split-at-any-layer contract, and say nothing about any real VFM.
Point `backbones.<name>.path` at a transformers directory, a torch-hub .pth or a
big_vision .npz to run the same job on real checkpoints.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.job = 'backbones'
  c.workdir = 'workdir/demo'
  c.seed = 0
  c.backbones = ml_collections.ConfigDict({
      'dinov2_init': {'path': 'init:dinov2', 'image_size': 112},
      'siglip_init': {'path': 'init:siglip', 'image_size': 112},
  })
  c.batch_size = 8
  c.num_images = 32
  return c
