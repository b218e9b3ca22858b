"""Position-embedding resampling against torch's own interpolate, for every method a reference uses."""
import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

from convert.resample import resample_grid, resample_pos


def _torch(grid, **kwargs):
  t = torch.from_numpy(grid).permute(2, 0, 1)[None]
  return F.interpolate(t, align_corners=False, **kwargs)[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize('old,new', [(37, 24), (4, 6), (16, 24), (24, 16), (5, 3)])
def test_methods_match_their_reference(old, new):
  grid = np.random.default_rng(old * new).standard_normal((old, old, 8)).astype(np.float32)
  refs = {
      'bicubic': _torch(grid, size=(new, new), mode='bicubic'),
      'bicubic_offset': _torch(grid, scale_factor=((new + 0.1) / old,) * 2, mode='bicubic'),
      'bicubic_aa': _torch(grid, size=(new, new), mode='bicubic', antialias=True),
      'bilinear_aa': _torch(grid, size=(new, new), mode='bilinear', antialias=True),
      'zoom': scipy.ndimage.zoom(grid, (new / old, new / old, 1), order=1),
  }
  for method, ref in refs.items():
    got = resample_grid(grid, new, method)
    assert got.shape == (new, new, 8) and got.dtype == np.float32
    assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max() * 10, method  # float32 rounding of ~4-unit values


def test_prefix_rows_are_kept_and_same_size_is_identity():
  pos = np.random.default_rng(0).standard_normal((1 + 16, 4)).astype(np.float32)
  out = resample_pos(pos, 1, 6, 'bicubic')
  assert out.shape == (1 + 36, 4)
  np.testing.assert_array_equal(out[0], pos[0])
  np.testing.assert_array_equal(resample_pos(pos, 1, 4, 'bicubic_offset'), pos)  # as DINOv2's code: no resampling
  with pytest.raises(ValueError, match='square grid'):
    resample_pos(pos[:-1], 1, 6, 'bicubic')
  with pytest.raises(ValueError, match='unknown position-embedding resampling'):
    resample_grid(pos[1:].reshape(4, 4, 4), 6, 'nearest')
