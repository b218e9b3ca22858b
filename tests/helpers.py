"""Shared test builders: tiny random transformers models of every supported class and their reference
outputs, image folders, run configs, and a tiny stitched problem on random ViTs.

Parameters are perturbed away from transformers' init (norm scales of 1, zero
biases, constant layer scales) so a converter that drops or swaps one of them
fails the parity tests.
"""
import dataclasses
import pathlib
import shutil

import jax
import numpy as np
import torch
import transformers as T
from PIL import Image

from stitchjax import model as model_lib
from stitchjax import stitch_layers as stitch_lib
from stitchjax import config_lib, tasks, vit

# name -> (model class, config factory, kwargs the ViT fields need at native size)
_COMMON = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4)
CASES = {
    'dinov2': lambda: T.Dinov2Model(T.Dinov2Config(**_COMMON, image_size=56, patch_size=14, mlp_ratio=2)),
    'dinov2_swiglu': lambda: T.Dinov2Model(T.Dinov2Config(**_COMMON, image_size=56, patch_size=14,
                                                            use_swiglu_ffn=True, layer_norm_eps=1e-5)),
    'dinov2_registers': lambda: T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(
        **_COMMON, image_size=42, patch_size=14, num_register_tokens=4, mlp_ratio=3)),
    'dinov3': lambda: T.DINOv3ViTModel(T.DINOv3ViTConfig(**_COMMON, intermediate_size=48, image_size=64, patch_size=16,
                                                          num_register_tokens=4)),
    'dinov3_gated': lambda: T.DINOv3ViTModel(T.DINOv3ViTConfig(
        **_COMMON, intermediate_size=40, image_size=48, patch_size=16, num_register_tokens=2, use_gated_mlp=True,
        hidden_act='silu', key_bias=True, rope_theta=50.0)),
    # No registers: transformers saves an empty (1, 0, D) register_tokens. Two blocks: fewer spans to compile.
    'dinov3_noreg': lambda: T.DINOv3ViTModel(T.DINOv3ViTConfig(**(_COMMON | dict(num_hidden_layers=2)),
                                                                intermediate_size=48, image_size=48, patch_size=16,
                                                                num_register_tokens=0)),
    'clip': lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**_COMMON, intermediate_size=48, image_size=64, patch_size=16)),
    'clip_full': lambda: T.CLIPModel(T.CLIPConfig(
        vision_config=dict(**_COMMON, intermediate_size=48, image_size=48, patch_size=16, hidden_act='gelu'),
        text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         vocab_size=50), projection_dim=8)),
    'siglip': lambda: T.SiglipVisionModel(T.SiglipVisionConfig(**_COMMON, intermediate_size=48, image_size=64,
                                                               patch_size=16)),
    'siglip_nohead': lambda: T.SiglipVisionModel(T.SiglipVisionConfig(**_COMMON, intermediate_size=48, image_size=48,
                                                                      patch_size=16, vision_use_head=False)),
    'siglip_full': lambda: T.SiglipModel(T.SiglipConfig(
        vision_config=dict(**_COMMON, intermediate_size=48, image_size=48, patch_size=16),
        text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         vocab_size=50))),
    'siglip2': lambda: T.Siglip2VisionModel(T.Siglip2VisionConfig(**_COMMON, intermediate_size=48, num_patches=16,
                                                                  patch_size=16)),
}


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.add_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim <= 1 or 'token' in name or 'probe' in name else 0.05))
  return model.eval()


def build(name: str, directory, seed: int = 0) -> torch.nn.Module:
  torch.manual_seed(seed)
  model = perturbed(CASES[name](), seed)
  model.save_pretrained(directory)
  return model


@dataclasses.dataclass
class Reference:
  hidden_states: list  # depth + 1 arrays (B, T, D)
  last: np.ndarray  # final-normed tokens
  pooled: np.ndarray | None


def vision_tower(model):
  return getattr(model, 'vision_model', model)


def reference(model, images: np.ndarray) -> Reference:
  """Runs the HF model on normalised (B,H,W,3) float32 images in eval mode."""
  tower = vision_tower(model)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  kwargs = dict(output_hidden_states=True)
  if isinstance(tower, T.Siglip2VisionModel):
    b, c, h, w = x.shape
    p = tower.config.patch_size
    patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), -1)
    kwargs.update(pixel_attention_mask=torch.ones(patches.shape[:2], dtype=torch.int32),
                  spatial_shapes=torch.tensor([[h // p, w // p]] * b))
    x = patches
  elif isinstance(tower, (T.CLIPVisionModel, T.SiglipVisionModel)):
    kwargs.update(interpolate_pos_encoding=True)
  with torch.no_grad():
    out = tower(x, **kwargs)
    # CLIP's last_hidden_state is not normed; stitchjax's `final` is post_layernorm on all tokens.
    last = tower.post_layernorm(out.last_hidden_state) if isinstance(tower, T.CLIPVisionModel) else out.last_hidden_state
  arr = lambda t: None if t is None else t.float().numpy()
  return Reference([arr(h) for h in out.hidden_states], arr(last), arr(out.pooler_output))


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


def rel_err(ours, ref) -> float:
  """max |ours - ref| / max |ref|: relative to the tensor's scale, so near-zero entries do not dominate."""
  ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def truncated_then_zeroed(path: pathlib.Path):
  """Damages a file twice, yielding after each for the test to check its error: cut to half its bytes,
  then replaced by 64 zero bytes."""
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  yield 'truncated'
  path.write_bytes(b'\x00' * 64)
  yield 'zeroed'


IMAGE_CLASSES = ('red', 'green', 'blue')


def image_folder(root: pathlib.Path, per_class: dict) -> None:
  """Colour-coded classes with noise: learnable, but only through the backbone features."""
  rng = np.random.default_rng(0)
  for split, n in per_class.items():
    for c, name in enumerate(IMAGE_CLASSES):
      d = root / split / name
      d.mkdir(parents=True)
      for i in range(n):
        img = rng.integers(0, 120, (40, 48, 3)).astype(np.uint8)
        img[..., c] += 120
        Image.fromarray(img).save(d / f'{i}.png')


def tiny_pair(root: pathlib.Path, per_class: dict) -> None:
  """The tiny models root/'a' (DINOv2 with registers) and root/'b' (SigLIP), and an image folder root/'data'."""
  build('dinov2_registers', root / 'a')
  build('siglip', root / 'b')
  image_folder(root / 'data', per_class)


def tiny_config(root: pathlib.Path):
  """A stitching config over tiny models root/'dinov2' (transformers, with registers, 42 px) and root/'siglip'
  (timm's SigLIP layout, tests/data/timm, at 32 px), and an image folder root/'data' of 12 training and 4
  test images per class: one pair, layer 1, float32. The two sources' checkpoint formats differ on purpose."""
  build('dinov2_registers', root / 'dinov2')
  shutil.copytree(pathlib.Path(__file__).parent / 'data' / 'timm' / 'siglip' / 'model', root / 'siglip')
  image_folder(root / 'data', {'train': 12, 'test': 4})
  c = config_lib.stitching(str(root / 'work'), dict(kind='image_folder', root=str(root / 'data'), val_fraction=0.25,
                                                    seed=0),
                           backbones={'dinov2': {'path': str(root / 'dinov2'), 'image_size': 42},
                                      'siglip': {'path': str(root / 'siglip'), 'image_size': 32}})
  c.pairs, c.layers, c.dtype = 'dinov2:siglip', '1', 'float32'
  return c


RUN_CONFIG = '''
from stitchjax import config_lib


def get_config():
  c = config_lib.stitching('unused', dict(kind='image_folder', root={data!r}, val_fraction=0.25, seed=0),
                           backbones={{'a': {{'path': {a!r}, 'image_size': 42}}, 'b': {{'path': {b!r}, 'image_size': 32}}}})
  c.pairs = 'a:b'
  c.layers = '1'
  c.methods = {methods!r}
  c.dtype = 'float32'
  c.train.epochs, c.train.patience, c.train.lrs = {epochs}, {epochs}, {lrs!r}
  c.train.batch_size = {{'lfm': 8, 'default': 8}}
  c.feature_batch_size = 4
  c.export = {export!r}
  return c
'''


def run_config(root: pathlib.Path, per_class: dict, *, methods: str, epochs: int, lrs: str, export: str) -> pathlib.Path:
  """A config file for run.py over tiny_pair(root, per_class), as subprocess tests start it."""
  tiny_pair(root, per_class)
  path = root / 'cfg.py'
  path.write_text(RUN_CONFIG.format(data=str(root / 'data'), a=str(root / 'a'), b=str(root / 'b'), methods=methods,
                                    epochs=epochs, lrs=lrs, export=export))
  return path


# Prefix-token layouts of the stitched-model tests: CLS, CLS + registers, none (MAP pooling).
PREFIXES = {'cls': dict(cls_token=True, num_registers=0), 'cls+registers': dict(cls_token=True, num_registers=3),
            'none': dict(cls_token=False, num_registers=0, pool='map')}


def vit_config(prefix: str, dim=16, grid=3, family='test', **kw):
  return vit.ViTConfig(family=family, depth=3, dim=dim, heads=2, mlp_dim=2 * dim, patch_size=4,
                       image_size=4 * grid, **(PREFIXES[prefix] | kw))


def tiny_problem(method_loss: str, seed=0):
  """A stitched model from layer 1 of two tiny random ViTs (CLS source, MAP-pooled target), its frozen
  params, an initial stitch (and head for 'tlt_loss') and 64 examples of cached features."""
  s, t = vit_config('cls', dim=16), vit_config('none', dim=16)
  sp, tp = vit.init_params(s, jax.random.key(seed)), vit.init_params(t, jax.random.key(seed + 1))
  spec = stitch_lib.StitchSpec('mlp', s, t, layer=1)
  model = model_lib.Stitched(spec)
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((64, s.image_size, s.image_size, 3)).astype(np.float32)
  arrays = {'source': np.asarray(vit.blocks(s, sp, vit.embed(s, sp, images), 0, 1)),
            'target_layer': np.asarray(vit.blocks(t, tp, vit.embed(t, tp, images), 0, 1)),
            'label': rng.integers(0, 3, 64).astype(np.int32)}
  arrays['target_final'] = np.asarray(vit.final(t, tp, vit.blocks(t, tp, arrays['target_layer'], 1, 3)))
  init = {'stitch': stitch_lib.init(spec, jax.random.key(2))}
  if method_loss == 'tlt_loss':
    init['head'] = tasks.head_init(t.dim, 3)
  return model, {'target': tp}, init, arrays
