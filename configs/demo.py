"""The embedded default: the paper's whole protocol, offline, on the project's own mini-VFMs.

    python run.py --config configs/demo.py

The weights ship with the package (stitchjax/assets/mini, written by
`python run.py --config configs/pretrain_mini.py`); the data is Debian's Fashion-MNIST.

Backbones: `dino_mini` (DINOv2 layout, self-distillation without labels) and `siglip_mini`
(SigLIP layout, sigmoid loss against label embeddings), 8 blocks each, trained by
stitchjax on Fashion-MNIST classes 0-4 (configs/pretrain_mini.py). They are NOT the real
VFMs. Task: the other five Fashion-MNIST classes (sandal, shirt, sneaker, bag, ankle
boot), whose images and labels neither model saw in pretraining; real data, and a
fine-grained flavour (three kinds of footwear), like the paper's tasks.

Runs the linear probe of each, lfm / ffm / tlt / ffm_tlt at stitch layers 2, 4, 6 in both
directions, the self-stitch baselines and the Figure 2 distances; writes results.json,
tables.md, accuracy_mlp.png and report.md to workdir/demo.
"""
from stitchjax import config_lib


def get_config():
  c = config_lib.stitching(
      'workdir/demo',
      dict(kind='fashion_mnist', root='/usr/share/datasets/fashion-mnist', classes=(5, 6, 7, 8, 9),
           limit_per_class=160, val_fraction=0.2, seed=0),  # 800 images in each of train, val and test
      backbones=config_lib.MINI_VFMS)
  c.pairs = 'dino_mini:siglip_mini,siglip_mini:dino_mini'
  c.layers = '2,4,6'
  c.dtype = 'float32'  # bf16 is slower than float32 on CPUs; on GPUs set --config.dtype=bfloat16
  # Sized to finish in under 10 minutes on 2 CPU cores: one learning rate instead of the paper's sweep
  # (--config.train.lrs=0.001,0.005,0.01 restores it), at most 6 epochs, and a resumable checkpoint at
  # most every 30 s (each costs ~0.1 s). The time goes into the target suffix's forward and backward
  # passes (~110 ms per batch of 64 through 6 blocks), so it scales with epochs x images.
  c.train.epochs = 6
  c.train.patience = 2
  c.train.lrs = '0.01'
  c.train.batch_size = dict(lfm=128, default=64)
  c.train.checkpoint_every_s = 30.0
  c.feature_batch_size = 256
  c.eval_batch_size = 256  # on CPUs each batch costs a dispatch; validation runs every epoch
  c.report_context = (
      'Setup: the mini-VFMs `dino_mini` (DINOv2 layout, trained without labels by DINO self-distillation) and '
      '`siglip_mini` (SigLIP layout, trained with a sigmoid loss against label embeddings) were pretrained by '
      'stitchjax on Fashion-MNIST classes 0-4. The task is classes 5-9 (sandal, shirt, sneaker, bag, ankle boot), '
      'unseen in pretraining. Stitch layer: 2-layer MLP; stitch points: blocks 2, 4, 6 of 8.')
  return c
