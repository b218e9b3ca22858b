"""Position-embedding resampling, exactly as each reference implementation does it.

The paper runs a 518 px DINOv2 checkpoint at 336 px, so a 37x37 grid of learned
positions becomes 24x24. Each layout's reference resamples differently:

- 'bicubic': torch `F.interpolate(size=..., mode='bicubic', align_corners=False)`
  (transformers' DINOv2, CLIP and SigLIP);
- 'bicubic_offset': the same kernel driven by `scale_factor=(new + 0.1) / old`, the
  historical offset in the original DINOv2 code (torch hub `.pth`);
- 'bicubic_aa': `F.interpolate(mode='bicubic', antialias=True)`
  (transformers' DINOv2 with registers);
- 'bilinear_aa': `F.interpolate(mode='bilinear', antialias=True)`
  (transformers' SigLIP2 NaFlex);
- 'zoom': `scipy.ndimage.zoom(order=1)` (big_vision's `resample_posemb`).

The separable kernels are built as (new, old) matrices in float64, so the result
agrees with torch's float32 arithmetic to rounding.
"""
import numpy as np
import scipy.ndimage

from stitchjax.preprocess import antialias_resize

METHODS = ('bicubic', 'bicubic_offset', 'bicubic_aa', 'bilinear_aa', 'zoom')


def _cubic(t, a=np.float32(-0.75)):
  """torch's cubic convolution weights for the 4 taps around a fractional offset t in [0, 1)."""
  def near(x):
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(old: int, new: int, scale: float) -> np.ndarray:
  """(new, old) weights of torch's bicubic, align_corners=False; `scale` maps output to input pixels."""
  # torch computes source coordinates and weights in float32; doing the same keeps the error at rounding level.
  f32 = np.float32
  src = f32(scale) * (np.arange(new, dtype=f32) + f32(0.5)) - f32(0.5)
  base = np.floor(src)
  weights = _cubic(src - base).astype(np.float64)
  m = np.zeros((new, old))
  for tap in range(4):
    idx = np.clip(base.astype(int) - 1 + tap, 0, old - 1)  # torch clamps out-of-range taps to the border
    np.add.at(m, (np.arange(new), idx), weights[:, tap])
  return m


def resample_grid(grid: np.ndarray, new: int, method: str) -> np.ndarray:
  """grid: (old, old, D) -> (new, new, D)."""
  old = grid.shape[0]
  if method not in METHODS:
    raise ValueError(f'unknown position-embedding resampling {method!r}; expected one of {METHODS}')
  if old == new:
    return grid
  if method == 'zoom':
    return scipy.ndimage.zoom(grid, (new / old, new / old, 1), order=1)
  if method.endswith('_aa'):
    # the same aten kernel the DINOv3 processor resizes with
    return antialias_resize(grid.astype(np.float32), new, new, method[:-3])
  scale = old / (new + 0.1) if method == 'bicubic_offset' else old / new
  m = bicubic_matrix(old, new, scale)
  out = np.einsum('ai,bj,ijd->abd', m, m, grid.astype(np.float64))
  return out.astype(grid.dtype)


def resample_pos(pos: np.ndarray, num_prefix: int, new_grid: int, method: str) -> np.ndarray:
  """pos: (num_prefix + old*old, D) learned positions -> (num_prefix + new*new, D); prefix rows are kept."""
  prefix, patches = pos[:num_prefix], pos[num_prefix:]
  old = int(round(np.sqrt(len(patches))))
  if old * old != len(patches):
    raise ValueError(f'{len(patches)} patch positions do not form a square grid')
  grid = resample_grid(patches.reshape(old, old, -1), new_grid, method)
  return np.concatenate([prefix, grid.reshape(new_grid * new_grid, -1)], axis=0)
