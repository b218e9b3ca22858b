"""The ViT's 2-D RoPEs rotate patch tokens only, keep their norms, and make attention scores depend on
relative positions (their exactness against transformers and timm is in test_vit and test_convert_timm)."""
import numpy as np
import pytest

from stitchjax import rope, vit

LAYOUTS = {'dinov3': dict(pos_embed='rope'), 'eva': dict(rope='eva', rope_theta=10000.0),
           'pe': dict(rope='pe', rope_theta=10000.0)}


def _cfg(layout, **kw):
  return vit.ViTConfig(family='test', depth=1, dim=16, heads=2, mlp_dim=32, patch_size=4, image_size=16, num_registers=1,
                       **(LAYOUTS[layout] | kw))


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_rope_rotates_patches_only_and_keeps_their_norms(layout):
  cfg = _cfg(layout)
  cos, sin = rope.tables(cfg)
  assert cos.shape == sin.shape == (cfg.num_patches, cfg.head_dim)
  x = np.random.default_rng(0).normal(size=(2, cfg.num_tokens, cfg.heads, cfg.head_dim)).astype(np.float32)
  out = np.asarray(rope.apply(x, cos, sin, cfg.num_prefix_tokens, interleaved=layout != 'dinov3'))
  np.testing.assert_array_equal(out[:, :cfg.num_prefix_tokens], x[:, :cfg.num_prefix_tokens])
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
  assert not np.allclose(out[:, cfg.num_prefix_tokens:], x[:, cfg.num_prefix_tokens:])


@pytest.mark.parametrize('layout', ['eva', 'pe'])
def test_attention_scores_depend_on_the_offset_between_patches_alone(layout):
  """Index coordinates (no rescaling to a reference grid): q at patch a and k at patch b score the same for
  every pair (a, b) one patch apart along a row."""
  cfg = _cfg(layout)
  cos, sin = rope.tables(cfg)
  rng = np.random.default_rng(1)
  q, k = (np.broadcast_to(rng.normal(size=cfg.head_dim).astype(np.float32), (1, cfg.num_patches, 1, cfg.head_dim))
          for _ in range(2))
  rq, rk = (np.asarray(rope.apply(t, cos, sin, 0, interleaved=True))[0, :, 0] for t in (q, k))
  g = cfg.grid
  scores = [rq[r * g + c] @ rk[r * g + c + 1] for r in range(g) for c in range(g - 1)]
  np.testing.assert_allclose(scores, scores[0], rtol=1e-4)
  assert not np.isclose(rq[0] @ rk[1], rq[0] @ rk[2])  # and they do depend on the offset
