"""The VFM Stitch Tree's accuracy-compute knob (paper §6.2, appendix B.6) on the mini-VFMs.

    python run.py --config configs/vst.py

The trunk `siglip_mini` (SigLIP layout, language-style supervision: the paper's CLIP role)
runs blocks [0, n); a branch into `dino_mini` (DINOv2 layout: the paper's DINOv2 role)
continues with dino_mini's blocks [n, L_out). L_out is the penultimate block (7 of 8), as
an MLLM reads it. Stitch: 2-layer MLP trained by FFM at L_out, label-free, from the trunk's
cached tokens. Each variant (Full, VST-n for every n in `layers`, each backbone alone) is
linear-probed on its mean-pooled L_out patch tokens on Fashion-MNIST classes 5-9 (unseen
in pretraining); writes workdir/vst/vst.{json,md} with extra compute (Table 13) and the
normalised gain (equation 2). A few minutes on two CPU cores; re-running resumes. More data
and epochs: --config.data.limit_per_class=600 --config.train.epochs=20.

These are the project's mini models trained by stitchjax, not the paper's VFMs, and a
linear probe is not an MLLM: the table shows the knob, not the paper's VQA numbers.
"""
from stitchjax import config_lib


def get_config():
  c = config_lib.stitching(
      'workdir/vst',
      dict(kind='fashion_mnist', root='/usr/share/datasets/fashion-mnist', classes=(5, 6, 7, 8, 9),
           limit_per_class=300, val_fraction=0.2, seed=0),
      backbones=config_lib.MINI_VFMS)
  c.job = 'vst'
  c.pairs = ''  # unused: the job derives trunk:branch pairs from trunk and branches
  c.trunk = 'siglip_mini'
  c.branches = 'dino_mini'  # comma-separated: a tree over k = 1 + len(branches) backbones
  c.layers = '2,4,6'  # VST-n: the trunk's blocks [0, n) are shared (of L_out = 7, like the paper's 6/14/22 of 23)
  c.out_layer = 0  # L_out; 0: each backbone's penultimate block (the MLLM convention)
  c.stitch_layer = 'mlp'  # one of linear, mlp, lora
  c.dtype = 'float32'  # bf16 is slower than float32 on CPUs
  c.train.epochs = 10  # the default run stays a few minutes on two CPU cores; the paper trains up to 100
  c.train.patience = 3
  c.train.lrs = '0.001,0.01'
  c.feature_batch_size = 256
  return c
