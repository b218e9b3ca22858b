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
  config_lib.on_two_cpu_cores(c)
  c.report_context = (
      'Setup: the mini-VFMs `dino_mini` (DINOv2 layout, trained without labels by DINO self-distillation) and '
      '`siglip_mini` (SigLIP layout, trained with a sigmoid loss against label embeddings) were pretrained by '
      'stitchjax on Fashion-MNIST classes 0-4. The task is classes 5-9 (sandal, shirt, sneaker, bag, ankle boot), '
      'unseen in pretraining. Stitch layer: 2-layer MLP; stitch points: blocks 2, 4, 6 of 8. These are mini models '
      'trained by stitchjax, not DINOv2 or SigLIP: nothing here is a claim about the real VFMs.')
  return c
