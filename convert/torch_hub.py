"""Original torch-hub DINOv2 / DINOv3 `.pth` checkpoints -> stitchjax ViT (the files are read by convert/pth.py).

`load` maps the layouts of facebookresearch/dinov2 `models/vision_transformer.py`
and facebookresearch/dinov3 `models/vision_transformer.py` (blocks `i`, ours `blocks/i/`):

    DINOv2                             DINOv3                          stitchjax
    cls_token (1,1,D)                  cls_token (1,1,D)               embed/cls
    pos_embed (1,1+P,D)                (none: rope_embed.periods)      embed/pos
    register_tokens (1,R,D)            storage_tokens (1,R,D)          embed/registers
    patch_embed.proj                   patch_embed.proj                embed/patch
    blocks.i.norm1, .norm2             blocks.i.norm1, .norm2          norm1, norm2
    blocks.i.attn.qkv (rows q; k; v)   same, times attn.qkv.bias_mask  attn/q, attn/k, attn/v
    blocks.i.attn.proj                 blocks.i.attn.proj              attn/o
    blocks.i.ls1.gamma, .ls2.gamma     blocks.i.ls1.gamma, .ls2.gamma  ls1, ls2
    blocks.i.mlp.fc1, .fc2 (GELU)      blocks.i.mlp.fc1, .fc2 (GELU)   mlp/fc1, mlp/fc2
    blocks.i.mlp.w12 (rows gate; up)   blocks.i.mlp.w1 (gate), .w2     mlp/gate, mlp/up (SiLU)
    blocks.i.mlp.w3                    blocks.i.mlp.w3                 mlp/fc2
    norm                               norm                            norm

ViT-g's BlockChunk layout (`blocks.{chunk}.{i}.…`, i counted from the first
block) is flattened to `blocks.{i}.…` first.

The config is read off the tensors. What the files do not record comes from the
reference code: LayerNorm eps (DINOv2 1e-6; DINOv3's released 'layernormbf16'
1e-5), exact GELU, and DINOv3's native image size (the hub's img_size=224; RoPE
has no table tied to it). The attention head count is not stored either:

- DINOv3 stores it indirectly: `rope_embed.periods` has head_dim / 4 entries;
- DINOv2 does not: the released widths map to their head counts (S 384/6,
  B 768/12, L 1024/16, g 1536/24); any other width needs `heads=`.

DINOv3's LinearKMaskedBias multiplies the qkv bias by `bias_mask`; the released
models zero the key third, which becomes qkv_bias=(True, False, True). A masked
third must be all 0 and a kept one all 1, and the RoPE periods must be
`base ** (4k / head_dim)` (the `base` parametrisation); rope_theta is that base.

Ignored: `mask_token` (masked-image pretraining) and DINOv3's `local_cls_norm`
(applied to local crops in training only). Refused: DINOv3's `cls_norm`
(untie_cls_and_patch_norms), since stitchjax has one final norm; a `head.*`
(the hub backbones' head is nn.Identity) or any other leftover key.

Position resampling follows each hub constructor: 'bicubic_offset' for DINOv2
(interpolate_offset=0.1, no antialias); 'bicubic_aa' for DINOv2 with registers
(the `_reg` models use interpolate_offset=0 and antialias=True); 'bicubic' for
DINOv3, which has no learned positions to resample.
"""
import math
import re

import numpy as np

from convert import common
from convert.common import CheckpointError, conv, dense, norm, split
from convert.pth import load_state_dict
from stitchjax.vit import ViTConfig

DINOV2_HEADS = {384: 6, 768: 12, 1024: 16, 1536: 24}  # ViT-S/14, B/14, L/14, g/14: 64 per head
IGNORED = (r'^mask_token$', r'^local_cls_norm\.')
CHUNKED = re.compile(r'^blocks\.(\d+)\.(\d+)\.(.+)$')  # BlockChunk: blocks.{chunk}.{block}.…



def _unchunk(arrays: dict, path) -> dict:
  """BlockChunk keys `blocks.{chunk}.{i}.…` -> `blocks.{i}.…`; i already counts from the first block."""
  chunked = {k: m.groups() for k in arrays if (m := CHUNKED.match(k))}
  if not chunked:
    return arrays
  plain = [k for k in arrays if k.startswith('blocks.') and k not in chunked]
  if plain:
    raise CheckpointError(f'{path}: both chunked (blocks.C.I.…) and plain (e.g. {plain[0]!r}) block keys')
  out, chunk_of = {k: v for k, v in arrays.items() if k not in chunked}, {}
  for key, (chunk, i, rest) in chunked.items():
    if chunk_of.setdefault(i, chunk) != chunk:
      raise CheckpointError(f'{path}: block {i} appears in chunks {chunk_of[i]} and {chunk} ({key!r})')
    out[f'blocks.{i}.{rest}'] = arrays[key]
  return out


def _shape(r: common.Reader, key: str, ndim: int) -> tuple:
  if not r.has(key):
    raise r.error(f'missing key {key!r}')
  shape = tuple(np.shape(r.arrays[key]))
  if len(shape) != ndim:
    raise r.error(f'key {key!r} has shape {shape}, expected {ndim} axes')
  return shape


def _depth(r: common.Reader) -> int:
  found = {int(m.group(1)) for k in r.arrays if (m := re.match(r'blocks\.(\d+)\.', k))}
  if not found:
    raise r.error('no blocks.N.… keys')
  return max(found) + 1  # a gap in the numbering surfaces as a missing key


def _patch(r: common.Reader) -> tuple[int, int]:
  dim, channels, p, p2 = _shape(r, 'patch_embed.proj.weight', 4)
  if channels != 3 or p != p2:
    raise r.error(f'patch_embed.proj.weight has shape {(dim, channels, p, p2)}; expected (D, 3, p, p)')
  return dim, p


def _common_fields(r: common.Reader, gate: str, fc1: str) -> dict:
  """Fields both layouts read the same way off block 0 (later blocks that differ fail at assembly)."""
  b = 'blocks.0.'
  gated = r.has(b + gate + '.weight')
  mlp_dim = _shape(r, b + gate + '.weight', 2)[0] if gated else _shape(r, b + fc1 + '.weight', 2)[0]
  return dict(depth=_depth(r), mlp='gated' if gated else 'mlp', act='silu' if gated else 'gelu',
              mlp_dim=mlp_dim, mlp_bias=r.has(b + (gate if gated else fc1) + '.bias'),
              layer_scale=r.has(b + 'ls1.gamma'), proj_bias=r.has(b + 'attn.proj.bias'),
              patch_bias=r.has('patch_embed.proj.bias'))


def _dinov2_heads(r: common.Reader, dim: int, heads: int | None) -> int:
  if heads is not None:
    return heads
  if dim not in DINOV2_HEADS:
    raise r.error(f'cannot tell the number of attention heads: torch-hub checkpoints do not store it, and '
                  f'dim={dim} is not a released DINOv2 width {DINOV2_HEADS}; pass heads= explicitly')
  return DINOV2_HEADS[dim]


def _dinov2_fields(r: common.Reader, heads: int | None) -> tuple[dict, str]:
  dim, p = _patch(r)
  num_pos = _shape(r, 'pos_embed', 3)[1] - 1
  grid = math.isqrt(max(num_pos, 0))
  if grid * grid != num_pos or grid == 0:
    raise r.error(f'pos_embed has {num_pos} patch positions, not a square grid')
  registers = _shape(r, 'register_tokens', 3)[1] if r.has('register_tokens') else 0
  fields = _common_fields(r, gate='mlp.w12', fc1='mlp.fc1')
  if fields['mlp'] == 'gated':
    fields['mlp_dim'] //= 2  # w12 stacks gate and up
  qkv_bias = r.has('blocks.0.attn.qkv.bias')
  fields.update(family='dinov2', dim=dim, heads=_dinov2_heads(r, dim, heads), patch_size=p, image_size=grid * p,
                num_registers=registers, qkv_bias=(qkv_bias,) * 3, norm_eps=1e-6)
  return fields, 'bicubic_aa' if registers else 'bicubic_offset'


def _rope(r: common.Reader, dim: int, heads: int | None) -> tuple[int, float]:
  """(heads, rope_theta) from the periods buffer: head_dim / 4 entries, base ** (4k / head_dim)."""
  periods = r.get('rope_embed.periods').astype(np.float64)
  head_dim = 4 * len(periods) if periods.ndim == 1 else 0
  if not head_dim or dim % head_dim:
    raise r.error(f'rope_embed.periods has shape {periods.shape}; expected (head_dim / 4,) '
                  f'with head_dim dividing dim={dim}')
  if heads is not None and heads != dim // head_dim:
    raise r.error(f'heads={heads} disagrees with rope_embed.periods, whose {len(periods)} entries give '
                  f'head_dim={head_dim}, so {dim // head_dim} heads')
  k = np.arange(len(periods))
  # Any base gives periods [1] for head_dim 4; the hub's default base is then as good as any.
  theta = periods[-1]**(head_dim / (4 * k[-1])) if len(k) > 1 else 100.0
  theta = float(f'{theta:.6g}')  # the float32 buffer pins the base to about 7 digits
  if not np.allclose(periods, theta**(4 * k / head_dim), rtol=1e-5, atol=0):
    raise r.error(f'rope_embed.periods {np.round(periods, 4).tolist()} is not base ** (4k / head_dim) for any base '
                  '(only the pos_embed_rope_base parametrisation is supported, not min_period/max_period)')
  return dim // head_dim, theta


def _bias_thirds(r: common.Reader, key: str) -> list[np.ndarray]:
  value = r.get(key)
  if value.ndim != 1 or len(value) % 3:
    raise r.error(f'key {key!r} has shape {value.shape}, which does not split into q, k and v')
  return np.split(value, 3)


def _kept_biases(r: common.Reader, block: str) -> tuple[bool, bool, bool]:
  """Which of q, k, v keep their bias: all without a bias_mask, else where the mask third is all 1 (not 0)."""
  if not r.has(block + 'attn.qkv.bias'):
    return (False, False, False)
  if not r.has(block + 'attn.qkv.bias_mask'):
    return (True, True, True)
  key = block + 'attn.qkv.bias_mask'
  kept = []
  for name, third in zip('qkv', _bias_thirds(r, key)):
    if not (np.all(third == 1) or np.all(third == 0)):
      raise r.error(f'{key!r}: the {name} third is neither all 1 nor all 0; only whole-projection masks are supported')
    kept.append(bool(np.all(third == 1)))
  return tuple(kept)


def _dinov3_fields(r: common.Reader, heads: int | None) -> tuple[dict, str]:
  if any(k.startswith('cls_norm.') for k in r.arrays):
    raise r.error('cls_norm.*: this model normalises CLS and register tokens apart from the patches '
                  '(untie_cls_and_patch_norms); stitchjax has one final norm, so it cannot be loaded exactly')
  dim, p = _patch(r)
  heads, theta = _rope(r, dim, heads)
  registers = _shape(r, 'storage_tokens', 3)[1] if r.has('storage_tokens') else 0
  fields = _common_fields(r, gate='mlp.w1', fc1='mlp.fc1')
  fields.update(family='dinov3', dim=dim, heads=heads, patch_size=p, image_size=224, num_registers=registers,
                pos_embed='rope', rope_theta=theta, qkv_bias=_kept_biases(r, 'blocks.0.'), norm_eps=1e-5)
  return fields, 'bicubic'


def _qkv(r: common.Reader, cfg, s: str, o: str):
  split(r, s + 'attn.qkv.weight', [o + 'attn/q', o + 'attn/k', o + 'attn/v'])
  key = s + 'attn.qkv.bias'
  if not r.has(key):
    return  # assembly reports it missing if cfg wants one
  kept = _kept_biases(r, s)
  if kept != cfg.qkv_bias:
    raise r.error(f'{key!r} keeps the q, k, v biases {kept}, but block 0 keeps {cfg.qkv_bias}')
  for name, bias, keep in zip('qkv', _bias_thirds(r, key), kept):
    if keep:
      r.set(f'{o}attn/{name}/bias', bias, key)
    elif not np.all(np.isfinite(bias)):  # the original multiplies it by 0, which a NaN or inf survives
      raise r.error(f'{key!r}: the masked {name} bias is not finite, so the original model would output NaN')


def _block(r: common.Reader, cfg, i: int, gate_up: tuple[str, ...]):
  s, o = f'blocks.{i}.', f'blocks/{i}/'
  norm(r, s + 'norm1', o + 'norm1')
  norm(r, s + 'norm2', o + 'norm2')
  _qkv(r, cfg, s, o)
  dense(r, s + 'attn.proj', o + 'attn/o')
  if cfg.layer_scale:
    r.put(o + 'ls1', s + 'ls1.gamma')
    r.put(o + 'ls2', s + 'ls2.gamma')
  if cfg.mlp == 'gated':
    if len(gate_up) == 1:  # DINOv2's fused w12: the first half goes through SiLU
      split(r, s + gate_up[0] + '.weight', [o + 'mlp/gate', o + 'mlp/up'])
      if r.has(s + gate_up[0] + '.bias'):
        split(r, s + gate_up[0] + '.bias', [o + 'mlp/gate', o + 'mlp/up'])
    else:
      dense(r, s + gate_up[0], o + 'mlp/gate')
      dense(r, s + gate_up[1], o + 'mlp/up')
    dense(r, s + 'mlp.w3', o + 'mlp/fc2')
  else:
    dense(r, s + 'mlp.fc1', o + 'mlp/fc1')
    dense(r, s + 'mlp.fc2', o + 'mlp/fc2')


def _convert(r: common.Reader, cfg):
  v2 = cfg.family == 'dinov2'
  r.put('embed/cls', 'cls_token', lambda a: a.reshape(-1))
  if v2:
    r.put('embed/pos', 'pos_embed', lambda a: a[0])
  if cfg.num_registers:
    r.put('embed/registers', 'register_tokens' if v2 else 'storage_tokens', lambda a: a[0])
  r.put('embed/patch/kernel', 'patch_embed.proj.weight', conv)
  if cfg.patch_bias:
    r.put('embed/patch/bias', 'patch_embed.proj.bias')
  gate_up = ('mlp.w12',) if v2 else ('mlp.w1', 'mlp.w2')
  for i in range(cfg.depth):
    _block(r, cfg, i, gate_up)
  norm(r, 'norm', 'norm')


def load(path, heads: int | None = None) -> tuple[dict, str, dict, None]:
  """-> (ViTConfig fields at native resolution, resampling method, params, None: no processor config).

  heads: the attention head count, which DINOv2 files do not store; needed only
    for widths other than the released ones. For DINOv3 it must agree with the
    RoPE buffer.
  """
  reader = common.Reader(path, _unchunk(load_state_dict(path), path))
  if reader.has('pos_embed'):
    fields, method = _dinov2_fields(reader, heads)
  elif reader.has('rope_embed.periods'):
    fields, method = _dinov3_fields(reader, heads)
  else:
    raise reader.error('neither pos_embed (DINOv2) nor rope_embed.periods (DINOv3): '
                       'not an original DINOv2 or DINOv3 backbone state dict')
  try:
    cfg = ViTConfig(**fields)
  except ValueError as e:
    raise reader.error(f'tensor shapes give an impossible config: {e}') from e
  _convert(reader, cfg)
  reader.check_all_used(IGNORED)
  return cfg.to_dict(), method, common.assemble(cfg, reader), None
