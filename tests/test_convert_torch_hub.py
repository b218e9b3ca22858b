"""The torch-hub `.pth` converter against transformers (the files themselves: test_convert_pth.py).

No hub checkpoint is downloaded: tiny transformers DINOv2 / DINOv3 models are saved
under the original facebookresearch/dinov2 and dinov3 names and layouts (fused qkv,
SwiGLU's w12 or w1/w2/w3, DINOv3's bias_mask and RoPE periods buffer), restated
here from those repositories' modules independently of the converter, then loaded
back and run block by block against the torch model.
"""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import helpers as H
from convert import CheckpointError, load_checkpoint, resample, torch_hub
from stitchjax import vit

TOL = 1e-5
HEADS = 4  # helpers' tiny models; their DINOv2 widths are not released sizes: heads= is required


# ---- transformers model -> the original torch-hub state dict

def _cat(sd, keys):
  return torch.cat([sd[k] for k in keys])


def _common(sd, h, s, out):
  """The parts of a block both originals name alike (h: transformers prefix, s: original prefix)."""
  for part in ('weight', 'bias'):
    out[f'{s}norm1.{part}'] = sd[f'{h}norm1.{part}']
    out[f'{s}norm2.{part}'] = sd[f'{h}norm2.{part}']
    out[f'{s}attn.proj.{part}'] = sd[f'{h}attention.o_proj.{part}']
  out[s + 'attn.qkv.weight'] = _cat(sd, [f'{h}attention.{n}_proj.weight' for n in 'qkv'])
  out[s + 'ls1.gamma'] = sd[h + 'layer_scale1.lambda1']
  out[s + 'ls2.gamma'] = sd[h + 'layer_scale2.lambda1']


def _linear(sd, hf, original, out):
  out[original + '.weight'], out[original + '.bias'] = sd[hf + '.weight'], sd[hf + '.bias']


def dinov2_original(model) -> dict:
  """dinov2/models/vision_transformer.py: pos_embed over [CLS, patches], registers inserted after it."""
  sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
  e = 'embeddings.'
  out = {'cls_token': sd[e + 'cls_token'], 'pos_embed': sd[e + 'position_embeddings'],
         'mask_token': sd[e + 'mask_token'].reshape(1, -1)}
  if e + 'register_tokens' in sd:
    out['register_tokens'] = sd[e + 'register_tokens']
  _linear(sd, e + 'patch_embeddings.projection', 'patch_embed.proj', out)
  _linear(sd, 'layernorm', 'norm', out)
  for i in range(model.config.num_hidden_layers):
    h, s = f'encoder.layer.{i}.', f'blocks.{i}.'
    _common(sd, h, s, out)
    out[s + 'attn.qkv.bias'] = _cat(sd, [f'{h}attention.{n}_proj.bias' for n in 'qkv'])
    if model.config.use_swiglu_ffn:  # SwiGLUFFN: x1, x2 = w12(x).chunk(2); w3(silu(x1) * x2)
      for part in ('weight', 'bias'):
        out[f'{s}mlp.w12.{part}'] = _cat(sd, [f'{h}mlp.gate_proj.{part}', f'{h}mlp.up_proj.{part}'])
      _linear(sd, h + 'mlp.down_proj', s + 'mlp.w3', out)
    else:
      _linear(sd, h + 'mlp.fc1', s + 'mlp.fc1', out)
      _linear(sd, h + 'mlp.fc2', s + 'mlp.fc2', out)
  return out


def rope_periods(theta: float, head_dim: int) -> torch.Tensor:
  """dinov3 RopePositionEmbedding._init_weights with `base` (fp32, as the hub's pos_embed_rope_dtype)."""
  return theta**(2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))


def dinov3_original(model) -> dict:
  """dinov3/models/vision_transformer.py; LinearKMaskedBias when transformers has no key bias."""
  sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
  c = model.config
  e = 'embeddings.'
  out = {'cls_token': sd[e + 'cls_token'], 'storage_tokens': sd[e + 'register_tokens'],
         'mask_token': sd[e + 'mask_token'].reshape(1, -1),
         'rope_embed.periods': rope_periods(c.rope_theta, c.hidden_size // c.num_attention_heads)}
  _linear(sd, e + 'patch_embeddings', 'patch_embed.proj', out)
  _linear(sd, 'norm', 'norm', out)
  layer = 'model.layer.' if any(k.startswith('model.layer.') for k in sd) else 'layer.'
  g = torch.Generator().manual_seed(1)
  for i in range(c.num_hidden_layers):
    h, s = f'{layer}{i}.', f'blocks.{i}.'
    _common(sd, h, s, out)
    q, v = sd[h + 'attention.q_proj.bias'], sd[h + 'attention.v_proj.bias']
    if c.key_bias:  # a plain nn.Linear qkv
      out[s + 'attn.qkv.bias'] = torch.cat([q, sd[h + 'attention.k_proj.bias'], v])
    else:  # the masked key third holds whatever it was trained to; the mask zeroes it
      out[s + 'attn.qkv.bias'] = torch.cat([q, torch.randn(q.shape, generator=g), v])
      out[s + 'attn.qkv.bias_mask'] = torch.cat([torch.ones_like(q), torch.zeros_like(q), torch.ones_like(v)])
    if c.use_gated_mlp:  # SwiGLUFFN: w3(silu(w1 x) * w2 x)
      for hf, original in (('gate_proj', 'w1'), ('up_proj', 'w2'), ('down_proj', 'w3')):
        _linear(sd, h + 'mlp.' + hf, s + 'mlp.' + original, out)
    else:
      _linear(sd, h + 'mlp.up_proj', s + 'mlp.fc1', out)
      _linear(sd, h + 'mlp.down_proj', s + 'mlp.fc2', out)
  return out


def tiny(name):
  """A perturbed tiny transformers model; DINOv2's LayerNorms get the original code's eps of 1e-6."""
  torch.manual_seed(0)
  model = H.perturbed(H.CASES[name]())
  if name.startswith('dinov2'):
    for m in model.modules():
      if isinstance(m, torch.nn.LayerNorm):
        m.eps = 1e-6
  return model


def original(model) -> dict:
  return dinov2_original(model) if model.config.model_type.startswith('dinov2') else dinov3_original(model)


def save(path, sd):
  torch.save(sd, path)
  return path


# ---- parity with transformers at every layer boundary

EXPECTED = {  # fields the tensors alone decide, and the resampling method
    'dinov2': (dict(mlp='mlp', act='gelu', num_registers=0, qkv_bias=(True,) * 3, norm_eps=1e-6), 'bicubic_offset'),
    'dinov2_swiglu': (dict(mlp='gated', act='silu', mlp_dim=88, num_registers=0, norm_eps=1e-6), 'bicubic_offset'),
    'dinov2_registers': (dict(mlp='mlp', num_registers=4, image_size=42, norm_eps=1e-6), 'bicubic_aa'),
    'dinov3': (dict(mlp='mlp', act='gelu', num_registers=4, pos_embed='rope', rope_theta=100.0,
                    qkv_bias=(True, False, True), norm_eps=1e-5, image_size=224), 'bicubic'),
    'dinov3_gated': (dict(mlp='gated', act='silu', num_registers=2, rope_theta=50.0, qkv_bias=(True,) * 3,
                          norm_eps=1e-5), 'bicubic'),
}


def boundary_errors(model, cfg, params) -> dict:
  x = H.images(2, cfg.image_size)
  ref = H.reference(model, x)
  errs = {'embed': H.rel_err(tokens := vit.embed(cfg, params, x), ref.hidden_states[0])}
  for i in range(cfg.depth):
    tokens = vit.blocks(cfg, params, tokens, i, i + 1)
    errs[f'block{i}'] = H.rel_err(tokens, ref.hidden_states[i + 1])
  tokens = vit.final(cfg, params, tokens)
  errs['final'] = H.rel_err(tokens, ref.last)
  errs['pool'] = H.rel_err(vit.pool(cfg, params, tokens), ref.pooled)
  return errs


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_matches_transformers_at_every_boundary(name, tmp_path):
  model = tiny(name)
  path = save(tmp_path / 'model.pth', original(model))
  v2 = name.startswith('dinov2')
  fields, method, params, processor = torch_hub.load(path, heads=HEADS if v2 else None)
  want, want_method = EXPECTED[name]
  assert {k: fields[k] for k in want} == want
  assert (method, processor) == (want_method, None)
  c = model.config
  assert (fields['depth'], fields['dim'], fields['heads'], fields['patch_size']) == \
      (c.num_hidden_layers, c.hidden_size, HEADS, c.patch_size)
  # DINOv3 files record no image size (RoPE needs none): run at the transformers model's.
  cfg = dataclasses.replace(vit.ViTConfig(**fields), image_size=c.image_size)
  errs = boundary_errors(model, cfg, params)
  print(name, {k: f'{v:.1e}' for k, v in errs.items()})
  assert max(errs.values()) <= TOL, errs


def test_load_checkpoint_passes_heads_through(tmp_path):
  path = save(tmp_path / 'model.pth', original(tiny('dinov2')))
  direct, via = torch_hub.load(path, heads=HEADS), load_checkpoint(path, heads=HEADS)
  assert direct[:2] == via[:2]
  np.testing.assert_array_equal(direct[2]['blocks']['attn']['q']['kernel'], via[2]['blocks']['attn']['q']['kernel'])


def test_dinov2_heads_come_from_the_released_widths_or_the_caller(tmp_path):
  path = save(tmp_path / 'model.pth', original(tiny('dinov2')))
  with pytest.raises(CheckpointError, match=r'model.pth: cannot tell the number of attention heads.*dim=32.*heads='):
    torch_hub.load(path)
  assert torch_hub.load(path, heads=8)[0]['heads'] == 8  # the caller's word: the file cannot contradict it
  with pytest.raises(CheckpointError, match='dim=32 is not divisible by heads=5'):
    torch_hub.load(path, heads=5)
  # A released width needs no help; the block count and everything else still come from the tensors.
  d = 384
  sd = {'cls_token': torch.zeros(1, 1, d), 'pos_embed': torch.zeros(1, 5, d),
        'patch_embed.proj.weight': torch.zeros(d, 3, 14, 14), 'patch_embed.proj.bias': torch.zeros(d),
        'norm.weight': torch.ones(d), 'norm.bias': torch.zeros(d),
        'blocks.0.attn.qkv.weight': torch.zeros(3 * d, d), 'blocks.0.attn.qkv.bias': torch.zeros(3 * d),
        'blocks.0.attn.proj.weight': torch.zeros(d, d), 'blocks.0.attn.proj.bias': torch.zeros(d),
        'blocks.0.mlp.fc1.weight': torch.zeros(4 * d, d), 'blocks.0.mlp.fc1.bias': torch.zeros(4 * d),
        'blocks.0.mlp.fc2.weight': torch.zeros(d, 4 * d), 'blocks.0.mlp.fc2.bias': torch.zeros(d),
        **{f'blocks.0.norm{n}.{p}': torch.ones(d) for n in (1, 2) for p in ('weight', 'bias')}}
  fields = torch_hub.load(save(tmp_path / 'small.pth', sd))[0]
  assert (fields['heads'], fields['depth'], fields['image_size'], fields['layer_scale']) == (6, 1, 28, False)


def test_dinov3_heads_come_from_the_rope_buffer(tmp_path):
  path = save(tmp_path / 'model.pth', original(tiny('dinov3')))
  assert torch_hub.load(path, heads=HEADS)[0]['heads'] == HEADS
  with pytest.raises(CheckpointError, match='heads=8 disagrees with rope_embed.periods.*head_dim=8, so 4 heads'):
    torch_hub.load(path, heads=8)


# ---- layouts around the plain state dict

def _params_equal(a, b):
  import jax
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_chunked_blocks_are_flattened(tmp_path):
  """ViT-g's BlockChunk: chunk c holds blocks.c.i for its blocks i, numbered from the first block."""
  sd = original(tiny('dinov2_swiglu'))
  chunked = {(f'blocks.{int(k.split(".")[1]) // 2}.' + k[len('blocks.'):] if k.startswith('blocks.') else k): v
             for k, v in sd.items()}
  assert 'blocks.1.2.mlp.w12.weight' in chunked and 'blocks.0.1.mlp.w3.bias' in chunked
  plain = torch_hub.load(save(tmp_path / 'plain.pth', sd), heads=HEADS)
  flat = torch_hub.load(save(tmp_path / 'chunked.pth', chunked), heads=HEADS)
  assert plain[:2] == flat[:2]
  _params_equal(plain[2], flat[2])
  chunked['blocks.0.2.ls1.gamma'] = chunked['blocks.1.2.ls1.gamma']
  with pytest.raises(CheckpointError, match='block 2 appears in chunks'):
    torch_hub.load(save(tmp_path / 'twice.pth', chunked), heads=HEADS)


def test_wrappers_and_prefixes_are_unwrapped_only_when_unambiguous(tmp_path):
  sd = original(tiny('dinov3'))
  plain = torch_hub.load(save(tmp_path / 'plain.pth', sd))
  for wrapped in ({'teacher': {'backbone.' + k: v for k, v in sd.items()}},
                  {'model': {'module.backbone.' + k: v for k, v in sd.items()}, 'iteration': 7},
                  {'state_dict': sd, 'optimizer': {'state': {}, 'param_groups': []}}):
    loaded = torch_hub.load(save(tmp_path / 'wrapped.pth', wrapped))
    assert loaded[:2] == plain[:2]
    _params_equal(loaded[2], plain[2])
  with pytest.raises(CheckpointError, match=r"ambig.pth: .*keys \['student', 'teacher'\] each hold one"):
    torch_hub.load(save(tmp_path / 'ambig.pth', {'student': sd, 'teacher': sd}))
  with pytest.raises(CheckpointError, match="none.pth: .*none of its values is one"):
    torch_hub.load(save(tmp_path / 'none.pth', {'epoch': 3}))
  # A prefix on only some keys (a teacher with its DINO head) is not stripped: the head is left over.
  head = {'backbone.' + k: v for k, v in sd.items()} | {'dino_head.last_layer.weight': torch.zeros(4, 4)}
  with pytest.raises(CheckpointError, match='neither pos_embed'):
    torch_hub.load(save(tmp_path / 'head.pth', head))


# ---- position resampling, against the original code's own interpolate call

@pytest.mark.parametrize('name,new', [('dinov2', 6), ('dinov2', 3), ('dinov2_registers', 5), ('dinov2_registers', 2)])
def test_resampled_positions_follow_the_original_code(name, new, tmp_path):
  sd = original(tiny(name))
  fields, method, params, _ = torch_hub.load(save(tmp_path / 'model.pth', sd), heads=HEADS)
  ours = resample.resample_pos(params['embed']['pos'], 1, new, method)
  # DinoVisionTransformer.interpolate_pos_encoding: the plain hub models pass scale_factor=(new + 0.1) / old,
  # the _reg models interpolate_offset=0 (so size=) and antialias=True.
  pos = sd['pos_embed'].float()
  old = int(np.sqrt(pos.shape[1] - 1))
  grid = pos[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
  if fields['num_registers']:
    out = F.interpolate(grid, size=(new, new), mode='bicubic', antialias=True)
  else:
    out = F.interpolate(grid, scale_factor=((new + 0.1) / old,) * 2, mode='bicubic', antialias=False)
  assert out.shape[-2:] == (new, new)
  want = torch.cat([pos[:, :1], out.permute(0, 2, 3, 1).reshape(1, new * new, -1)], dim=1)[0].numpy()
  assert H.rel_err(ours, want) <= 1e-6


# ---- checkpoints that must be refused, each naming the file and the key

def _load_edited(tmp_path, name, fn):
  sd = original(tiny(name))
  fn(sd)
  return torch_hub.load(save(tmp_path / 'model.pth', sd), heads=HEADS)


def test_missing_key_is_named(tmp_path):
  with pytest.raises(CheckpointError, match=r"model.pth: missing key 'blocks.1.norm2.bias'"):
    _load_edited(tmp_path, 'dinov2', lambda sd: sd.pop('blocks.1.norm2.bias'))
  with pytest.raises(CheckpointError, match=r"model.pth: missing key 'blocks.2.mlp.w2.weight'"):
    _load_edited(tmp_path, 'dinov3_gated', lambda sd: sd.pop('blocks.2.mlp.w2.weight'))


def test_wrong_shape_is_named(tmp_path):
  with pytest.raises(CheckpointError, match=r"'blocks.2.norm1.weight' gives blocks/2/norm1/scale shape \(31,\), "
                                            r'expected \(32,\)'):
    _load_edited(tmp_path, 'dinov2', lambda sd: sd.update({'blocks.2.norm1.weight': torch.ones(31)}))
  with pytest.raises(CheckpointError, match=r"'blocks.1.attn.qkv.weight' has shape \(95, 32\), which does not split"):
    _load_edited(tmp_path, 'dinov3', lambda sd: sd.update({'blocks.1.attn.qkv.weight': torch.ones(95, 32)}))
  with pytest.raises(CheckpointError, match='pos_embed has 15 patch positions, not a square grid'):
    _load_edited(tmp_path, 'dinov2', lambda sd: sd.update({'pos_embed': torch.ones(1, 16, 32)}))


@pytest.mark.parametrize('name,extra,message', [
    ('dinov2', 'head.weight', "unexpected keys 'head.weight'"),
    ('dinov3', 'blocks.0.attn.extra', "unexpected keys 'blocks.0.attn.extra'"),
    ('dinov3', 'cls_norm.weight', 'cls_norm.*untie_cls_and_patch_norms'),
    ('dinov3', 'local_cls_norm.weight', None),  # training-only: ignored
])
def test_extra_keys(tmp_path, name, extra, message):
  edit = lambda sd: sd.update({extra: torch.ones(32)})
  if message is None:
    _load_edited(tmp_path, name, edit)
  else:
    with pytest.raises(CheckpointError, match='model.pth: ' + message):
      _load_edited(tmp_path, name, edit)


def test_dinov3_bias_mask_and_rope_periods_are_checked(tmp_path):
  key = 'blocks.1.attn.qkv.bias_mask'

  def partial_mask(sd):
    sd[key] = sd[key].clone()
    sd[key][40] = 1.0  # one entry of the masked key third
  with pytest.raises(CheckpointError, match=f"'{key}': the k third is neither all 1 nor all 0"):
    _load_edited(tmp_path, 'dinov3', partial_mask)
  with pytest.raises(CheckpointError, match=r"'blocks.1.attn.qkv.bias' keeps the q, k, v biases \(True, True, True\)"):
    _load_edited(tmp_path, 'dinov3', lambda sd: sd.update({key: torch.ones(96)}))

  def nan_key_bias(sd):
    sd['blocks.0.attn.qkv.bias'] = sd['blocks.0.attn.qkv.bias'].clone()
    sd['blocks.0.attn.qkv.bias'][40] = float('nan')
  with pytest.raises(CheckpointError, match='the masked k bias is not finite'):
    _load_edited(tmp_path, 'dinov3', nan_key_bias)
  with pytest.raises(CheckpointError, match=r'rope_embed.periods .* is not base \*\* \(4k / head_dim\)'):
    _load_edited(tmp_path, 'dinov3', lambda sd: sd.update({'rope_embed.periods': torch.tensor([2.0, 10.0])}))
  with pytest.raises(CheckpointError, match=r'rope_embed.periods has shape \(3,\)'):
    _load_edited(tmp_path, 'dinov3', lambda sd: sd.update({'rope_embed.periods': torch.ones(3)}))


def test_unknown_layout_is_refused(tmp_path):
  with pytest.raises(CheckpointError, match='model.pth: neither pos_embed .* nor rope_embed.periods'):
    _load_edited(tmp_path, 'dinov3', lambda sd: sd.pop('rope_embed.periods'))
