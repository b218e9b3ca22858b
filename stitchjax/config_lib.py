"""The config structure every stitching config shares (paper appendix A.2), as one function.

Fields (all overridable: `--config.layers=14,22 --config.backbones.dinov2.path=/ckpt/dinov2-large`):
- workdir: results, checkpoints, feature cache (unless cache_dir is set) and exports;
- backbones: name -> {path: anything load_backbone accepts, image_size, processor_backend: 'pil' (the default)
  or 'torchvision', which of transformers' image processors the backbone's pixels are (stitchjax/preprocess.py)};
- data: {kind, root, ...}, see stitchjax/data/ (one module per kind in data/kinds/);
- pairs: 'source:target,...'; every backbone in a pair also gets self-stitch cells;
- layers, methods, stitch_layer, train.lrs: comma-separated lists (layers='scout:K': each pair's K best by
  the scout);
- train: epochs, patience, lrs, batch_size.{lfm, default, ...}, weight_decay, checkpoint_every_s (0: a
  resumable checkpoint after every epoch; more: at most one per that many seconds, for runs of tiny epochs);
- eval_batch_size: the batch of validation and test passes (0: train.batch_size.default);
- dtype: compute dtype of backbones and stitch (parameters stay float32); remat: recompute the target
  suffix in the backward pass (memory for time);
- task: 'classification' (a linear head on pooled features) or 'segmentation' (a linear decoder on
  the final patch tokens, scored by mIoU; needs a segmentation data kind and label_size, the
  evaluation resolution; see stitchjax/segmentation.py);
- export: the methods whose trained stitched models (classifiers, or segmenters with their decoder) are
  exported for load_stitched;
- scout: the stitchability scout's subsample, ridges, ranking proxy and how many layers it recommends;
- analysis_only: skip training and only rewrite the Figures 2-6 / Table 12 analyses of the workdir;
- report_context: a paragraph on the setup that opens report.md (stitchjax/report.py).
"""
import pathlib

import ml_collections

# The project's own mini-VFMs (stitchjax/assets/mini, made by configs/pretrain_mini.py): not real VFMs.
MINI_DIR = pathlib.Path(__file__).parent / 'assets' / 'mini'
MINI_VFMS = {
    'dino_mini': {'path': str(MINI_DIR / 'dino_mini'), 'image_size': 28},
    'siglip_mini': {'path': str(MINI_DIR / 'siglip_mini'), 'image_size': 28},
}

# The paper's four ViT-L backbones at the resolutions it runs them (appendix A.1). Download
# them yourself (nothing is fetched at run time) and point the paths at the local copies.
PAPER_BACKBONES = {
    'dinov2': {'path': 'checkpoints/dinov2-large', 'image_size': 336},
    'clip': {'path': 'checkpoints/clip-vit-large-patch14-336', 'image_size': 336},
    'siglip2': {'path': 'checkpoints/siglip2-large-patch16-384', 'image_size': 384},
    'dinov3': {'path': 'checkpoints/dinov3-vitl16-pretrain-lvd1689m', 'image_size': 384},
}


def stitching(workdir: str, data: dict, backbones: dict = PAPER_BACKBONES, task: str = 'classification',
              label_size: int = 336) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.job = 'stitch'
  c.workdir = workdir
  c.task = task
  if task == 'segmentation':
    c.label_size = label_size  # labels are resized (nearest) to label_size x label_size for loss and mIoU
  c.seed = 0
  c.dtype = 'bfloat16'  # bf16 compute, fp32 master weights (A.2.2)
  # Recompute the target suffix's activations in the backward pass: a ViT-L pair at batch 128 stitched
  # at layer 2 plans 25 GiB with it and ~300 GiB without (XLA's CPU plan, BENCHMARKS.md).
  c.remat = False
  c.backbones = {name: {'processor_backend': 'pil'} | dict(spec) for name, spec in backbones.items()}
  c.data = dict(data)
  c.pairs = 'dinov2:siglip2,siglip2:dinov2'
  c.layers = '2,6,10,14,18,22'
  c.methods = 'lp,lfm,ffm,tlt,ffm_tlt'
  c.stitch_layer = 'mlp'  # or a list: 'linear,mlp,lora'
  c.lora_rank = 8
  c.train = dict(epochs=100, patience=5, lrs='0.001,0.005,0.01', weight_decay=1e-4,
                 batch_size=dict(lfm=256, default=128), checkpoint_every_s=0.0)
  c.feature_batch_size = 64
  c.eval_batch_size = 0  # validation and test passes (no gradients); 0: train.batch_size.default
  c.cache_dir = ''  # default: <workdir>/cache
  c.compilation_cache_dir = ''  # XLA's persistent cache; default: JAX's own if set, else <cache_dir>/xla; 'none': off
  c.export = 'ffm_tlt'
  # The scout (--config.job=scout; layers='scout:K' then stitches each pair at its K best): closed-form
  # proxies fitted on `subsample` training images; see stitchjax/scouting.py and docs/scout.md.
  c.scout = dict(subsample=2000, ridge=1e-4, probe_ridges='1e-3,1e-2,0.1,1,10', rank_by='lfm_r2', top=3)
  c.analysis_only = False  # True: train nothing, rewrite the analyses (stitchjax/analysis.py) from the workdir
  c.report_context = ''
  # True: one process per host or GPU node (stitchjax/distributed.py). Under srun and on TPU VMs JAX finds
  # its peers itself; elsewhere set the coordinator's host:port, the process count and this process's id.
  c.distributed = False
  c.coordinator_address = ''
  c.num_processes = 0
  c.process_id = -1
  return c


def on_two_cpu_cores(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The schedule of the mini-VFM configs (demo, seg_mini), sized to finish in minutes on 2 CPU cores.

  It departs from the paper's schedule: one learning rate instead of the sweep
  (--config.train.lrs=0.001,0.005,0.01 restores it), at most 5 epochs, and a resumable checkpoint at
  most every 30 s (each costs ~0.1 s). The time goes into the target suffix's forward and backward
  passes, so it scales with epochs x images.
  float32: bf16 is slower than float32 on CPUs (on GPUs set --config.dtype=bfloat16).
  remat: at this size, writing every block's activations into the layer scan's stacked buffers costs
  more than recomputing them: a TLT step through 6 mini blocks at batch 64 takes 118 ms with it and
  166 ms without (benchmarks/remat.py, BENCHMARKS.md). At ViT-S on CPU the two are even.
  """
  c.dtype = 'float32'
  c.remat = True
  c.train.epochs, c.train.patience, c.train.lrs = 5, 2, '0.01'
  c.train.batch_size = dict(lfm=128, default=64)
  c.train.checkpoint_every_s = 30.0
  c.feature_batch_size = 256
  c.eval_batch_size = 256  # on CPUs each batch costs a dispatch; validation runs every epoch
  return c
