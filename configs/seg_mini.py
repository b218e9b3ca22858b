"""Semantic segmentation on the mini-VFMs: the paper's Table 2 segmentation protocol, offline and small.

    python run.py --config configs/seg_mini.py

Task `fashion_mnist_seg` (stitchjax/data/kinds/fashion_mnist_seg.py): real Fashion-MNIST images of the classes the
mini-VFMs never saw in pretraining (sandal, shirt, sneaker, bag, ankle boot), labelled per
pixel: background, the garment's class where the pixel is bright, ignored on the soft edges.
A linear decoder on the final 7x7 patch tokens is upsampled bilinearly to the 28x28 labels;
the metric is mIoU over the test split. Runs each mini-VFM's decoder probe (`lp`), FFM (+
decoder on the frozen stitched model), TLT and FFM->TLT with the segmentation loss at stitch
layers 2, 4, 6 in both directions with the self-stitch baselines; writes results.json and
tables.md (Table 2 layout, mIoU) to workdir/seg_mini. Sized like configs/demo.py (800 images
per split, one learning rate, at most 5 epochs with patience 2, batch 64: config_lib.on_two_cpu_cores).
The mini-VFMs are NOT the paper's VFMs (configs/pretrain_mini.py).
"""
from stitchjax import config_lib


def get_config():
  c = config_lib.stitching(
      'workdir/seg_mini',
      dict(kind='fashion_mnist_seg', root='/usr/share/datasets/fashion-mnist', classes=(5, 6, 7, 8, 9),
           limit_per_class=160, val_fraction=0.2, seed=0),
      backbones=config_lib.MINI_VFMS, task='segmentation', label_size=28)
  c.pairs = 'dino_mini:siglip_mini,siglip_mini:dino_mini'
  c.layers = '2,4,6'
  c.methods = 'lp,ffm,tlt,ffm_tlt'
  config_lib.on_two_cpu_cores(c)
  return c
