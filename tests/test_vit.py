"""Parity of the ViT with transformers at every layer boundary, for every supported class."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers as H
from stitchjax import load_backbone, vit

TOL_F32 = 1e-5
TOL_BF16 = 2e-2


@pytest.fixture(scope='module', params=sorted(H.CASES))
def case(request, tmp_path_factory):
  directory = tmp_path_factory.mktemp(request.param)
  return request.param, directory, H.build(request.param, directory)


def _sizes(bb):
  """The checkpoint's own size and one that needs position interpolation (or a different RoPE grid)."""
  return bb.config.image_size, bb.config.image_size + 2 * bb.config.patch_size


def test_every_layer_boundary_matches_transformers(case):
  name, directory, model = case
  for size in _sizes(load_backbone(directory)):
    bb = load_backbone(directory, image_size=size)
    x = H.images(2, size, seed=size)
    ref = H.reference(model, x)
    depth = bb.config.depth
    assert len(ref.hidden_states) == depth + 1
    assert H.rel_err(bb.embed(bb.params, x), ref.hidden_states[0]) <= TOL_F32, (name, size, 'embed')
    for a in range(depth):
      for b in range(a + 1, depth + 1):
        got = bb.blocks(bb.params, ref.hidden_states[a], a, b)
        assert H.rel_err(got, ref.hidden_states[b]) <= TOL_F32, (name, size, a, b)
    final = bb.final(bb.params, ref.hidden_states[-1])
    assert H.rel_err(final, ref.last) <= TOL_F32, (name, size, 'final')
    if ref.pooled is None:
      assert bb.config.pool == 'none'
      with pytest.raises(ValueError, match='no pooler'):
        bb.pool(bb.params, final)
    else:
      assert H.rel_err(bb.pool(bb.params, final), ref.pooled) <= TOL_F32, (name, size, 'pool')


def test_head_chunked_cpu_attention_matches_transformers(tmp_path, monkeypatch):
  """The tiny test models fit one attention call; a one-byte budget forces one head per call."""
  monkeypatch.setattr(vit, 'CPU_SCORE_BYTES', 1)
  jax.clear_caches()  # programs traced with the default budget must not be reused
  model = H.build('dinov3', tmp_path)
  bb = load_backbone(tmp_path)
  x = H.images(2, bb.config.image_size)
  ref = H.reference(model, x)
  q_shape = (2, bb.config.num_tokens, bb.config.heads, bb.config.head_dim)
  assert jax.default_backend() != 'cpu' or vit.cpu_head_chunk(q_shape, q_shape) == 1
  for a in range(bb.config.depth):
    assert H.rel_err(bb.blocks(bb.params, ref.hidden_states[a], a, a + 1), ref.hidden_states[a + 1]) <= TOL_F32, a
  jax.clear_caches()


def test_bfloat16_matches_transformers(case):
  name, directory, model = case
  bb = load_backbone(directory, dtype=jnp.bfloat16)
  x = H.images(2, bb.config.image_size, seed=1)
  ref = H.reference(model, x)
  tokens = bb.embed(bb.params, x)
  assert tokens.dtype == jnp.bfloat16
  assert H.rel_err(tokens, ref.hidden_states[0]) <= TOL_BF16
  for a in range(bb.config.depth):
    assert H.rel_err(bb.blocks(bb.params, ref.hidden_states[a], a, a + 1), ref.hidden_states[a + 1]) <= TOL_BF16
  final, pooled = bb.forward(bb.params, x)
  assert H.rel_err(final, ref.last) <= TOL_BF16
  if pooled is not None:
    assert H.rel_err(pooled, ref.pooled) <= TOL_BF16


# Splitting and rematerialising are the same code for every family; these cases cover every pooling,
# prefix layout and block variant (MAP head, CLIP's pre-norm, registers, DINOv3's RoPE and gated MLP).
COMPOSITION_CASES = ['clip', 'dinov2_registers', 'dinov3_gated', 'siglip']


@pytest.mark.parametrize('case', COMPOSITION_CASES, indirect=True)
def test_split_at_every_layer_composes_to_the_uninterrupted_forward(case):
  _, directory, _ = case
  bb = load_backbone(directory)
  x = H.images(2, bb.config.image_size, seed=2)
  whole, pooled = vit.ViT(bb.config).apply({'params': bb.params}, x)
  tokens = bb.embed(bb.params, x)
  for n in range(bb.config.depth + 1):
    split = bb.blocks(bb.params, bb.blocks(bb.params, tokens, 0, n), n, bb.config.depth)
    np.testing.assert_allclose(bb.final(bb.params, split), whole, rtol=0, atol=1e-5 * np.abs(whole).max())
  if pooled is not None:
    np.testing.assert_allclose(bb.forward(bb.params, x)[1], pooled, rtol=0, atol=1e-5 * np.abs(pooled).max())


@pytest.mark.parametrize('case', COMPOSITION_CASES, indirect=True)
def test_remat_changes_nothing_but_memory(case):
  _, directory, _ = case
  bb = load_backbone(directory)
  cfg = dataclasses.replace(bb.config, remat=True)
  x = H.images(1, bb.config.image_size, seed=3)
  tokens = bb.embed(bb.params, x)
  loss = lambda c: lambda p: jnp.sum(vit.blocks(c, p, tokens, 0, c.depth) ** 2)
  g_plain, g_remat = (jax.jit(jax.grad(loss(c)))(bb.params) for c in (bb.config, cfg))
  # Relative to the largest gradient: some true gradients are exactly zero (a key bias cannot change a softmax).
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_plain))
  for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
    assert float(jnp.abs(a - b).max()) <= 1e-5 * scale


def test_tokens_are_ordered_cls_registers_patches(tmp_path):
  model = H.build('dinov2_registers', tmp_path)
  bb = load_backbone(tmp_path)
  assert bb.config.num_prefix_tokens == 1 + 4
  tokens = bb.embed(bb.params, H.images(1, bb.config.image_size))
  emb = model.embeddings
  np.testing.assert_allclose(tokens[0, 0], (emb.cls_token[0, 0] + emb.position_embeddings[0, 0]).detach().numpy(),
                             atol=1e-6)
  np.testing.assert_allclose(tokens[0, 1:5], emb.register_tokens[0].detach().numpy(), atol=1e-6)


def test_config_fields_are_validated():
  base = dict(family='dinov2', depth=2, dim=32, heads=4, mlp_dim=64, patch_size=14, image_size=28)
  vit.ViTConfig(**base)
  for bad, match in [(dict(act='gelu_fancy'), 'act'), (dict(pool='mean'), 'pool'), (dict(heads=5), 'divisible'),
                     (dict(image_size=10), 'smaller than patch_size'), (dict(cls_token=False), "pool='cls'"),
                     (dict(dtype='float16'), 'dtype'), (dict(depth=0), 'positive')]:
    with pytest.raises(ValueError, match=match):
      vit.ViTConfig(**(base | bad))
  with pytest.raises(ValueError, match='unknown fields'):
    vit.ViTConfig.from_dict(base | {'hidden': 3})


def test_bad_spans_and_image_shapes_are_named(tmp_path):
  H.build('dinov2', tmp_path)
  bb = load_backbone(tmp_path)
  tokens = bb.embed(bb.params, H.images(1, bb.config.image_size))
  with pytest.raises(ValueError, match=r'block span \[2, 9\)'):
    bb.blocks(bb.params, tokens, 2, 9)
  with pytest.raises(ValueError, match=r'images must have shape \(B, 56, 56, 3\).*\(1, 64, 64, 3\)'):
    bb.embed(bb.params, H.images(1, 64))


def test_init_params_have_the_converted_layout(tmp_path):
  H.build('siglip', tmp_path)
  bb = load_backbone(tmp_path)
  fresh = vit.init_params(bb.config, jax.random.key(0))
  assert jax.tree.structure(fresh) == jax.tree.structure(bb.params)
  assert jax.tree.map(jnp.shape, fresh) == jax.tree.map(jnp.shape, bb.params)


@pytest.mark.parametrize('name', ['dinov2', 'siglip', 'dinov3'])
def test_image_size_off_the_patch_grid_drops_the_remainder_like_the_reference(name, tmp_path):
  model = H.build(name, tmp_path)
  native = load_backbone(tmp_path).config
  size = native.image_size + native.patch_size // 2  # e.g. SigLIP So400m/14 runs at 384 = 27 * 14 + 6
  bb = load_backbone(tmp_path, image_size=size)
  assert bb.config.grid == native.grid
  x = H.images(2, size)
  ref = H.reference(model, x)
  assert H.rel_err(bb.embed(bb.params, x), ref.hidden_states[0]) <= TOL_F32
  final, pooled = bb.forward(bb.params, x)
  assert H.rel_err(final, ref.last) <= TOL_F32
  assert H.rel_err(pooled, ref.pooled) <= TOL_F32
