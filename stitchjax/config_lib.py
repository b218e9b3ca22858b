"""The config structure every stitching config shares (paper appendix A.2), as one function.

Fields (all overridable: `--config.layers=14,22 --config.backbones.dinov2.path=/ckpt/dinov2-large`):
- workdir: results, checkpoints, feature cache (unless cache_dir is set) and exports;
- backbones: name -> {path: anything load_backbone accepts, image_size};
- data: {kind, root, ...}, see stitchjax/data.py;
- pairs: 'source:target,...'; every backbone in a pair also gets self-stitch cells;
- layers, methods, stitch_layer, train.lrs: comma-separated lists;
- train: epochs, patience, lrs, batch_size.{lfm, default, ...}, weight_decay;
- dtype: compute dtype of backbones and stitch (parameters stay float32);
- export: the methods whose trained stitched classifiers are exported for load_stitched.
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


def stitching(workdir: str, data: dict, backbones: dict = PAPER_BACKBONES) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.job = 'stitch'
  c.workdir = workdir
  c.seed = 0
  c.dtype = 'bfloat16'  # bf16 compute, fp32 master weights (A.2.2)
  c.backbones = {name: dict(spec) for name, spec in backbones.items()}
  c.data = dict(data)
  c.pairs = 'dinov2:siglip2,siglip2:dinov2'
  c.layers = '2,6,10,14,18,22'
  c.methods = 'lp,lfm,ffm,tlt,ffm_tlt'
  c.stitch_layer = 'mlp'  # or a list: 'linear,mlp,lora'
  c.lora_rank = 8
  c.train = dict(epochs=100, patience=5, lrs='0.001,0.005,0.01', weight_decay=1e-4,
                 batch_size=dict(lfm=256, default=128))
  c.feature_batch_size = 64
  c.cache_dir = ''  # default: <workdir>/cache
  c.export = 'ffm_tlt'
  c.distributed = False  # True: jax.distributed.initialize() first (one process per host)
  return c
