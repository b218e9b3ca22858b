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
    siglip     vit_base_patch16_siglip_{224,256,384,512},      (timm's SigLIP uses exact GELU)
               vit_large_patch16_siglip_{256,384,512},
               vit_so400m_patch14_siglip_{224,384}
    aimv2      aimv2_large_patch14_{224,336,448}              RMSNorm, a norm on the patch embedding,
                                                              SwiGLU, no biases, average pooling
    internvit  vit_intern300m_patch14_448                     no final norm

and of its `Eva` architectures:

    eva02      eva02_{base_patch16,large_patch14}_clip_224,   EVA-02's RoPE beside learned positions,
               eva02_large_patch14_clip_336                   SwiGLU with a norm inside, a norm on the
                                                              attention output, a key without bias
    dinov3     vit_{small,base,large}_patch16_dinov3[_qkvb]   (DINOv3's RoPE; timm pools the patches' mean)
    pe         vit_pe_core_{base_patch16_224,                 PE's RoPE (EVA-02's from 1, x before y), a MAP
               large_patch14_336}                             head with its own head count

Any of them with `qk_norm=True` in its `model_args` is read too (a norm on each head's queries and keys).
An architecture or a `model_args` value outside what the ViT represents is refused by name
(`CheckpointError`), never approximated. Learned positions are resampled to another image size as
timm's loader does (bicubic, antialiased: 'bicubic_aa').
"""
import pathlib

import safetensors.numpy

from convert import common
from convert.common import CheckpointError, conv, dense, norm
from convert.pth import load_state_dict
from stitchjax.preprocess import CLIP_MEAN, CLIP_STD, HALF, IMAGENET_MEAN, IMAGENET_STD
from stitchjax.vit import ViTConfig

# timm's VisionTransformer defaults, in its own argument names, except for its class-valued ones, which
# model_args never holds: norm and norm_eps stand for norm_layer, embed_norm for embed_norm_layer, and
# mlp_layer is 'mlp' or 'swiglu'.
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
# timm's Eva defaults, in its own argument names.
_EVA = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, qkv_bias=True, qkv_fused=True, qk_norm=False,
            mlp_ratio=4.0, swiglu_mlp=False, swiglu_align_to=0, scale_mlp=False, scale_attn_inner=False, attn_type='eva',
            init_values=None, attn_only_layer_scale=False, class_token=True, num_reg_tokens=0, no_embed_class=False,
            use_abs_pos_emb=True, use_rot_pos_emb=False, rope_type='cat', rope_grid_offset=0.0, rope_grid_indexing='ij',
            rope_temperature=10000.0, rope_rotate_half=False, use_post_norm=False, use_pre_transformer_norm=False,
            use_post_transformer_norm=None, use_fc_norm=None, global_pool='avg', ref_feat_shape=None, num_kv_heads=None,
            attn_pool_num_heads=None, attn_pool_mlp_ratio=None, in_chans=3, num_classes=0, norm_eps=1e-6)
_EVA02_CLIP = dict(qkv_fused=False, mlp_ratio=4 * 2 / 3, swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True,
                   use_rot_pos_emb=True, global_pool='token')
_DINOV3 = dict(patch_size=16, qkv_bias=False, init_values=1e-5, rope_type='dinov3', rope_temperature=100,
               rope_rotate_half=True, use_rot_pos_emb=True, use_abs_pos_emb=False, num_reg_tokens=4, use_fc_norm=False,
               norm_eps=1e-5)
_PE = dict(global_pool='map', attn_type='rope', use_pre_transformer_norm=True, use_rot_pos_emb=True,
           rope_grid_offset=1.0, rope_grid_indexing='xy', attn_pool_num_heads=8, attn_pool_mlp_ratio=4.0, norm_eps=1e-5)
# architecture -> (family, timm class, its registered model_args, its default image size)
ARCHITECTURES = {
    **{f'vit_{s}_patch14_dinov2': ('dinov2', 'vit', dict(_SIZES[s], patch_size=14, **_DINOV2), 518) for s in _SIZES},
    **{f'vit_{s}_patch14_reg4_dinov2': ('dinov2', 'vit', dict(_SIZES[s], patch_size=14, **_REG4), 518) for s in _SIZES},
    **{f'vit_large_patch14_clip_{n}': ('clip', 'vit', _CLIP, n) for n in (224, 336)},
    **{f'vit_large_patch14_clip_quickgelu_{n}': ('clip', 'vit', dict(_CLIP, act_layer='quick_gelu'), n)
       for n in (224, 336)},
    **{f'vit_{s}_patch16_siglip_{n}': ('siglip', 'vit', dict(_SIZES[s], **_SIGLIP), n)
       for s, sizes in (('base', (224, 256, 384, 512)), ('large', (256, 384, 512))) for n in sizes},
    **{f'vit_so400m_patch14_siglip_{n}': ('siglip', 'vit', dict(_SIGLIP, patch_size=14, embed_dim=1152, depth=27,
                                                                num_heads=16, mlp_ratio=3.7362), n) for n in (224, 384)},
    **{f'aimv2_large_patch14_{n}': ('aimv2', 'vit', _AIMV2, n) for n in (224, 336, 448)},
    'vit_intern300m_patch14_448': ('internvit', 'vit', dict(_L14, init_values=0.1, final_norm=False), 448),
    **{f'vit_{s}_patch16_dinov3{bias}': ('dinov3', 'eva', dict(_DINOV3, **_SIZES[s], qkv_bias=bool(bias)), 256)
       for s in _SIZES for bias in ('', '_qkvb')},
    'vit_pe_core_base_patch16_224': ('pe', 'eva', dict(_PE, ref_feat_shape=(14, 14)), 224),
    'vit_pe_core_large_patch14_336': ('pe', 'eva', dict(_PE, **_L14, ref_feat_shape=(24, 24)), 336),
    'eva02_base_patch16_clip_224': ('eva02', 'eva', dict(_EVA02_CLIP, ref_feat_shape=(16, 16)), 224),
    **{f'eva02_large_patch14_clip_{n}': ('eva02', 'eva', dict(_EVA02_CLIP, **_L14, ref_feat_shape=(16, 16)), n)
       for n in (224, 336)},
}
ACTS = {'gelu': 'gelu', 'quick_gelu': 'quick_gelu', 'silu': 'silu', 'swish': 'silu', 'gelu_tanh': 'gelu_tanh',
        'relu': 'relu'}
POOLS = {'token': 'cls', 'map': 'map', 'avg': 'avg', '': 'none'}
# model_args that change nothing in eval mode, or that only say how timm resamples at run time.
INERT = ('drop_rate', 'pos_drop_rate', 'patch_drop_rate', 'proj_drop_rate', 'attn_drop_rate', 'drop_path_rate',
         'weight_init', 'fix_init', 'dynamic_img_size', 'img_size', 'head_init_scale', 'rope_shift_coords',
         'rope_jitter_coords', 'rope_rescale_coords')
CLASSIFIER = (r'^head\.(weight|bias)$',)  # a classifier on the pooled output: not part of the backbone
_IMAGENET = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)
_OPENAI = dict(mean=CLIP_MEAN, std=CLIP_STD)
_HALF = dict(mean=HALF, std=HALF)
# The eval transform a bare state dict gets (it carries no pretrained_cfg): its family's default tag's.
FAMILY_DATA = {family: dict(interpolation='bicubic', crop_pct=crop_pct, crop_mode='center', **stats)
               for family, crop_pct, stats in (('dinov2', 1.0, _IMAGENET), ('clip', 1.0, _OPENAI),
                                               ('siglip', 0.9, _HALF),
                                               ('aimv2', 1.0, _OPENAI), ('internvit', 1.0, _IMAGENET),
                                               ('eva02', 1.0, _OPENAI), ('dinov3', 1.0, _IMAGENET),
                                               ('pe', 1.0, _HALF))}


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
  family, cls, registered, default_size = ARCHITECTURES[architecture]
  defaults = _VIT if cls == 'vit' else _EVA
  unknown = sorted(set(model_args) - set(defaults) - set(INERT))
  if unknown:
    raise CheckpointError(f'{where}: model_args {unknown} of {architecture} are not ones stitchjax represents')
  a = defaults | registered | {k: v for k, v in model_args.items() if k not in INERT}
  fields, refuse = (_vit_fields if cls == 'vit' else _eva_fields)(a)
  for bad, what in [(a['in_chans'] != 3, f'in_chans={a["in_chans"]}'),
                    (a['global_pool'] not in POOLS, f'global_pool={a["global_pool"]!r}'), *refuse]:
    if bad:
      raise CheckpointError(f'{where}: {architecture} with {what} is not supported')
  dim = a['embed_dim']
  return dict(family=family, depth=a['depth'], dim=dim, heads=a['num_heads'], mlp_dim=int(dim * a['mlp_ratio']),
              patch_size=a['patch_size'], image_size=_image_size(model_args, pretrained_cfg, default_size, where),
              pool=POOLS.get(a['global_pool']), qk_norm=a['qk_norm'], **fields)


def _vit_fields(a: dict) -> tuple[dict, list]:
  """VisionTransformer arguments -> (ViTConfig fields, [(refused?, what)])."""
  refuse = [(a['pos_embed'] != 'learn', f'pos_embed={a["pos_embed"]!r}'),
            (a['act_layer'] not in ACTS, f'act_layer={a["act_layer"]!r}'),
            # timm pools the patches alone with MAP; stitchjax's MAP head (SigLIP's) attends to every token.
            (a['global_pool'] == 'map' and (a['class_token'] or a['reg_tokens']), 'map pooling with prefix tokens'),
            # positions for the registers too: the one layout of learned positions stitchjax has no field for.
            (a['reg_tokens'] and not a['no_embed_class'], 'reg_tokens with no_embed_class=False'),
            (a['final_norm'] and (a['global_pool'] == 'avg' if a['fc_norm'] is None else a['fc_norm']),
             'fc_norm (a norm after pooling)')]
  return dict(cls_token=a['class_token'], num_registers=a['reg_tokens'],
              pos_embed='learned_patches' if a['no_embed_class'] else 'learned', pre_norm=a['pre_norm'],
              layer_scale=bool(a['init_values']), mlp='gated' if a['mlp_layer'] == 'swiglu' else 'mlp',
              act=ACTS.get(a['act_layer']), qkv_bias=(a['qkv_bias'],) * 3, proj_bias=a['proj_bias'],
              mlp_bias=a['proj_bias'], patch_bias=not a['pre_norm'], norm=a['norm'], norm_eps=a['norm_eps'],
              embed_norm=a['embed_norm'], final_norm=a['final_norm']), refuse


def _eva_fields(a: dict) -> tuple[dict, list]:
  """Eva arguments -> (ViTConfig fields, [(refused?, what)])."""
  fc_norm = a['global_pool'] == 'avg' if a['use_fc_norm'] is None else a['use_fc_norm']
  final_norm = not fc_norm if a['use_post_transformer_norm'] is None else a['use_post_transformer_norm']
  ref = a['ref_feat_shape']
  ref = [ref, ref] if isinstance(ref, int) else list(ref or [0, 0])
  cat = a['use_rot_pos_emb'] and a['rope_type'] == 'cat'
  grid = (a['rope_grid_offset'], a['rope_grid_indexing'], a['rope_rotate_half'])
  rope = 'eva' if cat and grid == (0, 'ij', False) else 'pe' if cat and grid == (1, 'xy', False) else None
  dinov3 = a['use_rot_pos_emb'] and a['rope_type'] == 'dinov3'
  pool_mlp = a['attn_pool_mlp_ratio']
  refuse = [(a['attn_type'] not in ('eva', 'rope'), f'attn_type={a["attn_type"]!r}'),
            (a['use_rot_pos_emb'] and not (cat or dinov3), f'rope_type={a["rope_type"]!r}'),
            (cat and rope is None, f'a rope grid (offset, indexing, half rotation) of {grid}'),
            (dinov3 and (grid != (0, 'ij', True) or a['use_abs_pos_emb']), "a DINOv3 rope other than DINOv3's"),
            (ref[0] != ref[1], f'ref_feat_shape={a["ref_feat_shape"]}'),
            (not dinov3 and (not a['use_abs_pos_emb'] or a['no_embed_class'] or a['num_reg_tokens']),
             "positions other than EVA-02's, PE's and DINOv3's"),
            (a['use_post_norm'], 'use_post_norm=True'), (a['num_kv_heads'], 'grouped-query attention'),
            (a['swiglu_mlp'] and not a['scale_mlp'], 'a SwiGLU without its inner norm (GluMlp)'),
            (a['swiglu_align_to'], 'swiglu_align_to'), (a['attn_only_layer_scale'], 'attn_only_layer_scale'),
            (pool_mlp is not None and pool_mlp != a['mlp_ratio'], 'a MAP head of another MLP width'),
            (fc_norm, 'fc_norm (a norm after pooling)')]
  # EvaAttention never biases the key; AttentionRope (PE) biases all three.
  bias = a['qkv_bias']
  return dict(cls_token=a['class_token'], num_registers=a['num_reg_tokens'], pos_embed='rope' if dinov3 else 'learned',
              rope=rope or 'none', rope_theta=float(a['rope_temperature']),
              rope_ref_grid=int(ref[0]) if rope else 0, pre_norm=a['use_pre_transformer_norm'],
              patch_bias=not a['use_pre_transformer_norm'], layer_scale=a['init_values'] is not None,
              attn_norm=a['scale_attn_inner'], mlp='gated' if a['swiglu_mlp'] else 'mlp',
              act='silu' if a['swiglu_mlp'] else 'gelu', mlp_norm=a['scale_mlp'],
              qkv_bias=(bias, bias and a['attn_type'] == 'rope', bias), norm_eps=a['norm_eps'], final_norm=final_norm,
              pool_heads=a['attn_pool_num_heads'] or 0), refuse


def _attention(r: common.Reader, s: str, o: str, fused: bool) -> None:
  """q, k and v: fused (one qkv matrix, its bias fused or, in Eva, q_bias and v_bias with no key bias) or apart."""
  qkv = [o + 'q', o + 'k', o + 'v']
  if not fused:
    for name in 'qkv':
      dense(r, f'{s}{name}_proj', f'{o}{name}')
    return
  common.split(r, s + 'qkv.weight', qkv)
  if r.has(s + 'qkv.bias'):
    common.split(r, s + 'qkv.bias', qkv)
  for name in ('q', 'v'):
    if r.has(f'{s}{name}_bias'):
      r.put(f'{o}{name}/bias', f'{s}{name}_bias')


def _params(r: common.Reader, cfg: ViTConfig) -> None:
  """timm's VisionTransformer or Eva state dict -> stitchjax names (fused qkv and the pooling head's kv split)."""
  def put_norm(key, ours):  # every norm of the model is of one kind: LayerNorm with a bias, or RMSNorm without
    norm(r, key, ours, bias=cfg.norm == 'layer')

  if cfg.cls_token:
    r.put('embed/cls', 'cls_token', lambda a: a.reshape(-1))
  if cfg.num_registers:
    r.put('embed/registers', 'reg_token', lambda a: a[0])
  if cfg.pos_embed != 'rope':
    r.put('embed/pos', 'pos_embed', lambda a: a[0])
  r.put('embed/patch/kernel', 'patch_embed.proj.weight', conv)
  if cfg.patch_bias:
    r.put('embed/patch/bias', 'patch_embed.proj.bias')
  if cfg.embed_norm:
    put_norm('patch_embed.norm', 'embed/patch_norm')
  if cfg.pre_norm:
    put_norm('norm_pre', 'embed/pre_norm')
  fused = r.has('blocks.0.attn.qkv.weight')  # as the first block is, every block is
  for i in range(cfg.depth):
    s, o = f'blocks.{i}.', f'blocks/{i}/'
    _attention(r, s + 'attn.', o + 'attn/', fused)
    if cfg.qk_norm:
      put_norm(s + 'attn.q_norm', o + 'attn/q_norm')
      put_norm(s + 'attn.k_norm', o + 'attn/k_norm')
    if cfg.attn_norm:
      put_norm(s + 'attn.norm', o + 'attn/norm')
    dense(r, s + 'attn.proj', o + 'attn/o')
    put_norm(s + 'norm1', o + 'norm1')
    put_norm(s + 'norm2', o + 'norm2')
    if cfg.layer_scale:  # VisionTransformer's LayerScale modules, or Eva's bare parameters
      gammas = ('ls1.gamma', 'ls2.gamma') if r.has(s + 'ls1.gamma') else ('gamma_1', 'gamma_2')
      r.put(o + 'ls1', s + gammas[0])
      r.put(o + 'ls2', s + gammas[1])
    names = {'gate': 'fc1_g', 'up': 'fc1_x', 'fc2': 'fc2'} if cfg.mlp == 'gated' else {'fc1': 'fc1', 'fc2': 'fc2'}
    for ours, name in names.items():
      dense(r, f'{s}mlp.{name}', f'{o}mlp/{ours}')
    if cfg.mlp_norm:
      put_norm(s + 'mlp.norm', o + 'mlp/norm')
  if cfg.final_norm:
    put_norm('norm', 'norm')
  if cfg.pool == 'map':
    h = 'attn_pool.'
    r.put('head/probe', h + 'latent', lambda a: a.reshape(1, -1))
    dense(r, h + 'q', 'head/attn/q')
    common.split(r, h + 'kv.weight', ['head/attn/k', 'head/attn/v'])
    common.split(r, h + 'kv.bias', ['head/attn/k', 'head/attn/v'])
    dense(r, h + 'proj', 'head/attn/o')
    put_norm(h + 'norm', 'head/norm')
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

