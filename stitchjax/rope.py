"""The 2-D rotary position embeddings of the ViT (stitchjax/vit.py): DINOv3's (`pos_embed='rope'`) and
EVA-02's and Perception Encoder's (`rope='eva'|'pe'`, beside learned positions). Tables are numpy, built
once per config at trace time; `apply` rotates the patch tokens of queries and keys."""
import jax.numpy as jnp
import numpy as np


def tables(cfg) -> tuple[np.ndarray, np.ndarray]:
  """cos and sin tables of shape (num_patches, head_dim) of the model's 2-D RoPE (see apply)."""
  return _dinov3(cfg) if cfg.pos_embed == 'rope' else _eva(cfg)


def _dinov3(cfg) -> tuple[np.ndarray, np.ndarray]:
  """DINOv3's: patch centres are normalised to [-1, 1] per axis; a quarter of the head dim
  rotates with y, a quarter with x, and the halves are tiled, as in transformers'
  DINOv3ViTRopePositionEmbedding (eval mode, no augmentation).
  """
  inv_freq = 1.0 / cfg.rope_theta**np.arange(0, 1, 4 / cfg.head_dim, dtype=np.float32)
  centres = (np.arange(0.5, cfg.grid, dtype=np.float32) / cfg.grid) * 2.0 - 1.0
  coords = np.stack(np.meshgrid(centres, centres, indexing='ij'), axis=-1).reshape(-1, 2)
  angles = (2 * np.pi * coords[:, :, None] * inv_freq[None, None, :]).astype(np.float32)
  angles = np.tile(angles.reshape(len(coords), -1), 2)
  return np.cos(angles), np.sin(angles)


def _eva(cfg) -> tuple[np.ndarray, np.ndarray]:
  """EVA-02's and PE's, in float32 step by step as timm computes them: band k of head_dim / 4 is
  theta^(-k / bands), patch (y, x) sits at index coordinates (PE's from 1) rescaled to the reference grid,
  and each angle (the y bands, then the x bands; PE: x, then y) covers an interleaved pair of channels."""
  f32, bands = np.float32, cfg.head_dim // 4
  freqs = f32(1) / f32(cfg.rope_theta) ** (np.arange(bands).astype(f32) / f32(bands))
  t = np.arange(cfg.grid).astype(f32) + f32(cfg.rope == 'pe')
  if cfg.rope_ref_grid:
    t = t / f32(cfg.grid) * f32(cfg.rope_ref_grid)
  coords = np.stack(np.meshgrid(t, t, indexing='ij'), axis=-1)  # (g, g, 2): y, x
  if cfg.rope == 'pe':
    coords = coords[..., ::-1]
  angles = (coords[..., None] * freqs).reshape(cfg.num_patches, 2 * bands)
  return np.repeat(np.cos(angles), 2, axis=-1), np.repeat(np.sin(angles), 2, axis=-1)


def apply(x, cos, sin, num_prefix: int, interleaved: bool = False):
  """Rotates the patch tokens of x: (B, T, heads, head_dim); prefix tokens pass through. Channel i turns
  with its partner in the other half (DINOv3) or, interleaved, with its neighbour in a pair (EVA-02)."""
  prefix, patches = x[:, :num_prefix], x[:, num_prefix:]
  if interleaved:
    pairs = patches.reshape(*patches.shape[:-1], -1, 2)
    rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(patches.shape)
  else:
    half = patches.shape[-1] // 2
    rotated = jnp.concatenate([-patches[..., half:], patches[..., :half]], axis=-1)
  cos, sin = (jnp.asarray(t, x.dtype)[None, :, None, :] for t in (cos, sin))
  return jnp.concatenate([prefix, patches * cos + rotated * sin], axis=1)
