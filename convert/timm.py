"""timm checkpoints -> stitchjax ViT, read without timm.

Two sources:
- a directory as `timm.models.save_for_hf` writes it: `config.json` (`architecture`, the
  `model_args` it was built with, `pretrained_cfg`) and `model.safetensors` or `pytorch_model.bin`;
- a bare state dict file (.safetensors, .pth, .bin) with the architecture named by the caller.

timm's `VisionTransformer` architectures of these families are read:

    family     architectures                                  what the ViT needs beyond the paper's four
    dinov2     vit_{small,base,large}_patch14_dinov2,          patch-only positions for reg4
               vit_{small,base,large}_patch14_reg4_dinov2
    clip       vit_large_patch14_clip_{224,336},              -
               vit_large_patch14_clip_quickgelu_{224,336}
    siglip     vit_{base,large}_patch16_siglip_{224,256,384},  (timm's SigLIP uses exact GELU)
               vit_so400m_patch14_siglip_{224,384}
    aimv2      aimv2_large_patch14_{224,336,448}              RMSNorm, a norm on the patch embedding,
                                                              SwiGLU, no biases, average pooling
    internvit  vit_intern300m_patch14_448                     no final norm

An architecture or a `model_args` value outside what the ViT represents is refused by name
(`CheckpointError`), never approximated. Learned positions are resampled to another image size as
timm's loader does (bicubic, antialiased: 'bicubic_aa').
"""
import pathlib

import safetensors.numpy

from convert import common
from convert.common import CheckpointError, conv, dense
from convert.pth import load_state_dict
from stitchjax.vit import ViTConfig

# timm's VisionTransformer defaults, in its own argument names.
_VIT = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True, qk_norm=False,
            proj_bias=True, init_values=None, class_token=True, pos_embed='learn', no_embed_class=False,
            reg_tokens=0, pre_norm=False, final_norm=True, fc_norm=None, global_pool='token', act_layer='gelu',
            norm='layer', norm_eps=1e-6, embed_norm=False, mlp_layer='mlp', in_chans=3, num_classes=0)
_L14 = dict(patch_size=14, embed_dim=1024, depth=24, num_heads=16)
_DINOV2 = dict(init_values=1e-5)
_REG4 = dict(init_values=1e-5, reg_tokens=4, no_embed_class=True)
_CLIP = dict(_L14, pre_norm=True, norm_eps=1e-5)
_SIGLIP = dict(class_token=False, global_pool='map')
_AIMV2 = dict(_L14, num_heads=8, class_token=False, fc_norm=False, mlp_ratio=2.75, global_pool='avg', qkv_bias=False,
              proj_bias=False, act_layer='silu', norm='rms', norm_eps=1e-5, embed_norm=True, mlp_layer='swiglu')
_SIZES = {'small': dict(embed_dim=384, depth=12, num_heads=6), 'base': dict(embed_dim=768, depth=12, num_heads=12),
          'large': dict(embed_dim=1024, depth=24, num_heads=16)}
# architecture -> (family, its registered model_args, its default image size)
ARCHITECTURES = {
    **{f'vit_{s}_patch14_dinov2': ('dinov2', dict(_SIZES[s], patch_size=14, **_DINOV2), 518) for s in _SIZES},
    **{f'vit_{s}_patch14_reg4_dinov2': ('dinov2', dict(_SIZES[s], patch_size=14, **_REG4), 518) for s in _SIZES},
    **{f'vit_large_patch14_clip_{n}': ('clip', _CLIP, n) for n in (224, 336)},
    **{f'vit_large_patch14_clip_quickgelu_{n}': ('clip', dict(_CLIP, act_layer='quick_gelu'), n) for n in (224, 336)},
    **{f'vit_{s}_patch16_siglip_{n}': ('siglip', dict(_SIZES[s], **_SIGLIP), n)
       for s in ('base', 'large') for n in (224, 256, 384)},
    **{f'vit_so400m_patch14_siglip_{n}': ('siglip', dict(_SIGLIP, patch_size=14, embed_dim=1152, depth=27, num_heads=16,
                                                         mlp_ratio=3.7362), n) for n in (224, 384)},
    **{f'aimv2_large_patch14_{n}': ('aimv2', _AIMV2, n) for n in (224, 336, 448)},
    'vit_intern300m_patch14_448': ('internvit', dict(_L14, init_values=0.1, final_norm=False), 448),
}
ACTS = {'gelu': 'gelu', 'quick_gelu': 'quick_gelu', 'silu': 'silu', 'swish': 'silu', 'gelu_tanh': 'gelu_tanh',
        'relu': 'relu'}
POOLS = {'token': 'cls', 'map': 'map', 'avg': 'avg', '': 'none'}
# model_args that change nothing in eval mode, or that only say how timm resamples at run time.
INERT = ('drop_rate', 'pos_drop_rate', 'patch_drop_rate', 'proj_drop_rate', 'attn_drop_rate', 'drop_path_rate',
         'weight_init', 'fix_init', 'dynamic_img_size', 'img_size')
CLASSIFIER = (r'^head\.(weight|bias)$',)
_IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
_OPENAI = dict(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))
# The eval transform a bare state dict gets (it carries no pretrained_cfg): its family's default tag's.
FAMILY_DATA = {family: dict(interpolation='bicubic', crop_pct=crop_pct, crop_mode='center', **stats)
               for family, crop_pct, stats in (('dinov2', 1.0, _IMAGENET), ('clip', 1.0, _OPENAI),
                                               ('siglip', 0.9, dict(mean=(0.5,) * 3, std=(0.5,) * 3)),
                                               ('aimv2', 1.0, _OPENAI), ('internvit', 1.0, _IMAGENET))}  # a classifier on the pooled output: not part of the backbone


def is_timm(config: dict) -> bool:
  """A config.json as timm writes it (transformers writes `architectures`, a list)."""
  return isinstance(config.get('architecture'), str)


def _image_size(args: dict, pretrained_cfg: dict, default: int, where: str) -> int:
  size = args.get('img_size') or (pretrained_cfg.get('input_size') or [3, default, default])[1:]
  size = [size, size] if isinstance(size, int) else list(size)
  if len(size) != 2 or size[0] != size[1]:
    raise CheckpointError(f'{where}: img_size {size} is not square; stitchjax runs square images')
  return int(size[0])


def vit_config(architecture: str, model_args: dict, pretrained_cfg: dict, where: str) -> dict:
  """ViTConfig fields at the checkpoint's native resolution from timm's architecture and model_args."""
  if architecture not in ARCHITECTURES:
    raise CheckpointError(f'{where}: timm architecture {architecture!r} is not one stitchjax represents; '
                          f'it reads {sorted(ARCHITECTURES)}')
  family, registered, default_size = ARCHITECTURES[architecture]
  unknown = sorted(set(model_args) - set(_VIT) - set(INERT))
  if unknown:
    raise CheckpointError(f'{where}: model_args {unknown} of {architecture} are not ones stitchjax represents')
  a = _VIT | registered | {k: v for k, v in model_args.items() if k not in INERT}
  refuse = [(a['in_chans'] != 3, f'in_chans={a["in_chans"]}'), (a['qk_norm'], 'qk_norm=True'),
            (a['pos_embed'] != 'learn', f'pos_embed={a["pos_embed"]!r}'),
            (a['act_layer'] not in ACTS, f'act_layer={a["act_layer"]!r}'),
            (a['global_pool'] not in POOLS, f'global_pool={a["global_pool"]!r}'),
            # timm pools the patches alone with MAP; stitchjax's MAP head (SigLIP's) attends to every token.
            (a['global_pool'] == 'map' and (a['class_token'] or a['reg_tokens']), 'map pooling with prefix tokens'),
            # positions for the registers too: the one layout of learned positions stitchjax has no field for.
            (a['reg_tokens'] and not a['no_embed_class'], 'reg_tokens with no_embed_class=False'),
            (a['final_norm'] and (a['global_pool'] in ('avg',) if a['fc_norm'] is None else a['fc_norm']),
             'fc_norm (a norm after pooling)')]
  for bad, what in refuse:
    if bad:
      raise CheckpointError(f'{where}: {architecture} with {what} is not supported')
  dim = a['embed_dim']
  return dict(family=family, depth=a['depth'], dim=dim, heads=a['num_heads'], mlp_dim=int(dim * a['mlp_ratio']),
              patch_size=a['patch_size'], image_size=_image_size(model_args, pretrained_cfg, default_size, where),
              cls_token=a['class_token'], num_registers=a['reg_tokens'],
              pos_embed='learned_patches' if a['no_embed_class'] else 'learned', pre_norm=a['pre_norm'],
              layer_scale=bool(a['init_values']), mlp='gated' if a['mlp_layer'] == 'swiglu' else 'mlp',
              act=ACTS[a['act_layer']], qkv_bias=(a['qkv_bias'],) * 3, proj_bias=a['proj_bias'],
              mlp_bias=a['proj_bias'], patch_bias=not a['pre_norm'], norm=a['norm'], norm_eps=a['norm_eps'],
              embed_norm=a['embed_norm'], final_norm=a['final_norm'], pool=POOLS[a['global_pool']])


def _norm(r: common.Reader, key: str, ours: str):
  r.put(ours + '/scale', key + '.weight')
  if r.has(key + '.bias'):  # RMSNorm has none
    r.put(ours + '/bias', key + '.bias')


def _params(r: common.Reader, cfg: ViTConfig) -> None:
  """timm's VisionTransformer state dict -> stitchjax names (fused qkv and the pooling head's kv split)."""
  if cfg.cls_token:
    r.put('embed/cls', 'cls_token', lambda a: a.reshape(-1))
  if cfg.num_registers:
    r.put('embed/registers', 'reg_token', lambda a: a[0])
  r.put('embed/pos', 'pos_embed', lambda a: a[0])
  r.put('embed/patch/kernel', 'patch_embed.proj.weight', conv)
  if cfg.patch_bias:
    r.put('embed/patch/bias', 'patch_embed.proj.bias')
  if cfg.embed_norm:
    _norm(r, 'patch_embed.norm', 'embed/patch_norm')
  if cfg.pre_norm:
    _norm(r, 'norm_pre', 'embed/pre_norm')
  for i in range(cfg.depth):
    s, o = f'blocks.{i}.', f'blocks/{i}/'
    common.split(r, s + 'attn.qkv.weight', [o + 'attn/q', o + 'attn/k', o + 'attn/v'])
    if r.has(s + 'attn.qkv.bias'):
      common.split(r, s + 'attn.qkv.bias', [o + 'attn/q', o + 'attn/k', o + 'attn/v'])
    dense(r, s + 'attn.proj', o + 'attn/o')
    _norm(r, s + 'norm1', o + 'norm1')
    _norm(r, s + 'norm2', o + 'norm2')
    if cfg.layer_scale:
      r.put(o + 'ls1', s + 'ls1.gamma')
      r.put(o + 'ls2', s + 'ls2.gamma')
    names = {'gate': 'fc1_g', 'up': 'fc1_x', 'fc2': 'fc2'} if cfg.mlp == 'gated' else {'fc1': 'fc1', 'fc2': 'fc2'}
    for ours, name in names.items():
      dense(r, f'{s}mlp.{name}', f'{o}mlp/{ours}')
  if cfg.final_norm:
    _norm(r, 'norm', 'norm')
  if cfg.pool == 'map':
    h = 'attn_pool.'
    r.put('head/probe', h + 'latent', lambda a: a.reshape(1, -1))
    dense(r, h + 'q', 'head/attn/q')
    common.split(r, h + 'kv.weight', ['head/attn/k', 'head/attn/v'])
    common.split(r, h + 'kv.bias', ['head/attn/k', 'head/attn/v'])
    dense(r, h + 'proj', 'head/attn/o')
    _norm(r, h + 'norm', 'head/norm')
    dense(r, h + 'mlp.fc1', 'head/mlp/fc1')
    dense(r, h + 'mlp.fc2', 'head/mlp/fc2')


def read_arrays(path: pathlib.Path) -> dict:
  """A timm weight file: safetensors, or a torch-saved state dict read without running code."""
  if path.suffix == '.safetensors':
    try:
      return safetensors.numpy.load_file(str(path))
    except Exception as e:
      raise CheckpointError(f'{path}: not a readable safetensors file ({e})') from e
  return load_state_dict(path)


def weights_file(directory: pathlib.Path) -> pathlib.Path:
  for name in ('model.safetensors', 'pytorch_model.bin'):
    if (directory / name).exists():
      return directory / name
  raise CheckpointError(f'{directory}: no model.safetensors or pytorch_model.bin weight file')


def fields(directory: pathlib.Path, config: dict | None = None) -> dict:
  """ViTConfig fields of a timm directory from its config.json alone."""
  config = common.read_config(directory) if config is None else config
  return vit_config(config['architecture'], config.get('model_args') or {}, config.get('pretrained_cfg') or {},
                    f'{directory}/config.json')


def load(source, architecture: str | None = None) -> tuple[dict, str, dict, dict | None]:
  """A timm directory, or a bare state dict file of `architecture` -> (ViTConfig fields at native
  resolution, position resampling method, params, {'timm': the pretrained_cfg its eval transform
  follows} (stitchjax.preprocess.from_timm))."""
  path = pathlib.Path(source)
  if path.is_dir():
    config = common.read_config(path)
    if architecture is not None and architecture != config['architecture']:
      raise CheckpointError(f'{path}/config.json: architecture {config["architecture"]!r}, not {architecture!r}')
    fields_, weights, pretrained_cfg = fields(path, config), weights_file(path), config.get('pretrained_cfg')
  else:
    if architecture is None:
      raise CheckpointError(f'{path}: a bare timm state dict; name its architecture (architecture=...)')
    fields_, weights = vit_config(architecture, {}, {}, str(path)), path
    pretrained_cfg = FAMILY_DATA[fields_['family']]
  try:
    cfg = ViTConfig(**fields_)
  except ValueError as e:
    raise CheckpointError(f'{path}: {e}') from e
  reader = common.Reader(weights, read_arrays(weights))
  _params(reader, cfg)
  reader.check_all_used(CLASSIFIER)
  return cfg.to_dict(), 'bicubic_aa', common.assemble(cfg, reader), {'timm': pretrained_cfg or {}}

