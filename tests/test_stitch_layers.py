"""Stitch layers and token alignment for every prefix-token combination (stitchjax/stitch_layers.py)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers as H
from stitchjax import vit
from stitchjax import stitch_layers as stitch_lib

def identity_linear(spec, params):
  d = spec.target.dim
  return params | {'linear': {'kernel': jnp.eye(d), 'bias': jnp.zeros(d)}}


@pytest.mark.parametrize('src,tgt', list(itertools.product(H.PREFIXES, H.PREFIXES)))
def test_alignment_rule_for_every_prefix_combination(src, tgt):
  s, t = H.vit_config(src), H.vit_config(tgt)
  spec = stitch_lib.StitchSpec('linear', s, t, layer=1)
  params = identity_linear(spec, stitch_lib.init(spec, jax.random.key(0)))
  x = jax.random.normal(jax.random.key(1), (2, s.num_tokens, s.dim))
  y = stitch_lib.apply(spec, params, x)
  assert y.shape == (2, t.num_tokens, t.dim)
  patches = x[:, s.num_prefix_tokens:]
  np.testing.assert_allclose(y[:, t.num_prefix_tokens:], patches, atol=1e-6)  # patches 1:1, same grid
  if t.cls_token:  # CLS from the source CLS, else the mean of the source patches
    np.testing.assert_allclose(y[:, 0], x[:, 0] if s.cls_token else patches.mean(1), atol=1e-6)
  if t.num_registers:
    registers = y[:, int(t.cls_token):t.num_prefix_tokens]
    if s.num_registers == t.num_registers:  # registers map 1:1 when the counts agree
      np.testing.assert_allclose(registers, x[:, 1:1 + s.num_registers], atol=1e-6)
      assert 'registers' not in params
    else:  # otherwise they are learned, the same for every image
      np.testing.assert_allclose(registers, jnp.broadcast_to(params['registers'], registers.shape), atol=1e-6)


@pytest.mark.parametrize('old,new', [(4, 2), (3, 5)])
def test_patch_grids_that_differ_are_resampled(old, new):
  import torch
  s, t = H.vit_config('cls', grid=old), H.vit_config('cls', grid=new)
  spec = stitch_lib.StitchSpec('linear', s, t, layer=1)
  params = identity_linear(spec, stitch_lib.init(spec, jax.random.key(0)))
  x = jax.random.normal(jax.random.key(1), (2, s.num_tokens, 16))
  y = stitch_lib.apply(spec, params, x)
  assert y.shape == (2, 1 + new * new, 16)
  # The documented rule, checked against torch's antialiased bilinear interpolation.
  grid = torch.from_numpy(np.array(x[:, 1:])).reshape(2, old, old, 16).permute(0, 3, 1, 2)
  ref = torch.nn.functional.interpolate(grid, size=(new, new), mode='bilinear', antialias=True, align_corners=False)
  np.testing.assert_allclose(y[:, 1:], ref.permute(0, 2, 3, 1).reshape(2, new * new, 16).numpy(), atol=1e-5)


@pytest.mark.parametrize('kind', stitch_lib.STITCH_LAYERS)
def test_stitch_layers_change_dims(kind):
  s, t = H.vit_config('cls', dim=16), H.vit_config('none', dim=24)
  spec = stitch_lib.StitchSpec(kind, s, t, layer=1, lora_rank=2)
  block = stitch_lib.frozen_block(spec, vit.init_params(s, jax.random.key(0)))
  params = stitch_lib.init(spec, jax.random.key(1), block)
  y = stitch_lib.apply(spec, params, jnp.ones((2, s.num_tokens, 16)), block)
  assert y.shape == (2, t.num_tokens, 24)
  if kind == 'mlp':
    assert params['fc1']['kernel'].shape == (16, 24)  # hidden width = target dim (LLaVA-1.5 projector)


def test_lora_starts_as_the_frozen_source_block():
  s = H.vit_config('cls+registers')
  src_params = vit.init_params(s, jax.random.key(0))
  spec = stitch_lib.StitchSpec('lora', s, s, layer=1, lora_rank=2)
  block = stitch_lib.frozen_block(spec, src_params)
  params = stitch_lib.init(spec, jax.random.key(1), block)
  assert {k.split('_')[-1] for k in params['lora']} == {'a', 'b'} and len(params['lora']) == 2 * 6
  x = jax.random.normal(jax.random.key(2), (2, s.num_tokens, s.dim))
  np.testing.assert_allclose(stitch_lib.apply(spec, params, x, block), vit.blocks(s, src_params, x, 1, 2),
                             atol=1e-5)


def test_spec_errors_name_the_field():
  s = H.vit_config('cls')
  with pytest.raises(ValueError, match="stitch_layer='conv'"):
    stitch_lib.StitchSpec('conv', s, s, layer=1)
  with pytest.raises(ValueError, match='layer=3 is outside 1..2 for the source'):
    stitch_lib.StitchSpec('mlp', s, s, layer=3)
