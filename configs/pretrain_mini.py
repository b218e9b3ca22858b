"""Pretrains the mini-VFMs of the demo (configs/demo.py, the default job) and writes them to stitchjax/assets/mini.

    python run.py --config configs/pretrain_mini.py

Two 8-block ViTs on 28x28 inputs (patch 4, a 7x7 grid), trained on the training images of
Fashion-MNIST classes 0-4 (T-shirt/top, trouser, pullover, dress, coat) only; the demo's
classes 5-9 are never seen. `dino_mini` has the DINOv2 layout and learns without labels by
DINO self-distillation; `siglip_mini` has the SigLIP layout and learns the labels with a
sigmoid loss against learned label embeddings (stitchjax/pretrain/). Each fits about ten
minutes on two CPU cores. A k-NN probe on classes 5-9 (both halves drawn from the training
file; the test file stays untouched) is logged before training and after every epoch.
"""
import ml_collections

from stitchjax import config_lib

FASHION = '/usr/share/datasets/fashion-mnist'


def get_config():
  c = ml_collections.ConfigDict()
  c.job = 'pretrain'
  c.workdir = 'workdir/pretrain'  # a copy of the log
  c.out_dir = str(config_lib.MINI_DIR)  # the exports and pretrain_log.json
  c.seed = 0
  c.log_every = 10  # steps per logged loss point
  # val_fraction 0.1: the pretraining pool is 27,000 images (the 3,000 val images go unused).
  c.data = dict(kind='fashion_mnist', root=FASHION, classes=(0, 1, 2, 3, 4), val_fraction=0.1, seed=0)
  c.probe = dict(data=dict(kind='fashion_mnist', root=FASHION, classes=(5, 6, 7, 8, 9), val_fraction=0.5,
                           limit_per_class=300, seed=0))
  c.models = dict(
      dino_mini=dict(
          objective='dino',
          vit=dict(family='dinov2', depth=8, dim=64, heads=4, mlp_dim=256, patch_size=4, image_size=28,
                   layer_scale=True, act='gelu', norm_eps=1e-6, pool='cls'),
          batch_size=128, epochs=2, lr=1e-3, warmup_steps=40, weight_decay=0.04, clip=3.0,
          dino=dict(prototypes=256, hidden=256, bottleneck=64, teacher_temp=0.04, student_temp=0.1,
                    center_momentum=0.9, momentum=0.99, freeze_prototypes_steps=40,
                    augment=dict(scale=(0.4, 1.0), flip=True, jitter=0.4, jitter_prob=0.8))),
      siglip_mini=dict(
          objective='siglip',
          vit=dict(family='siglip', depth=8, dim=80, heads=4, mlp_dim=320, patch_size=4, image_size=28,
                   cls_token=False, pool='map', act='gelu_tanh', norm_eps=1e-6),
          batch_size=256, epochs=3, lr=1e-3, warmup_steps=30, weight_decay=0.05, clip=1.0,
          siglip=dict(embed_dim=64, temperature_init=2.302585, bias_init=-10.0,
                      augment=dict(scale=(0.7, 1.0), flip=True, jitter=0.0, jitter_prob=0.0))),
  )
  return c
