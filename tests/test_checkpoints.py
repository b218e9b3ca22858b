"""Pytrees on disk: what is saved is what is read back, into the shapes asked for, never half written."""
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from convert.common import CheckpointError
from stitchjax import atomic, checkpoints

TREE = {'stitch': {'kernel': np.arange(6, dtype=np.float32).reshape(2, 3), 'bias': np.ones(3, np.float32)},
        'head': {'kernel': jnp.full((3, 2), 0.5, jnp.bfloat16)}, 'step': np.int32(7)}


def test_a_saved_tree_reads_back_exactly_as_saved_or_as_asked(tmp_path):
  checkpoints.save_tree(tmp_path / 'params', TREE)
  for like in (TREE, None):
    back = checkpoints.load_tree(tmp_path / 'params', like)
    assert back['head']['kernel'].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(back['stitch']['kernel'], TREE['stitch']['kernel'])
    np.testing.assert_array_equal(np.asarray(back['head']['kernel'], np.float32), 0.5)
    assert int(back['step']) == 7
  assert isinstance(checkpoints.load_tree(tmp_path / 'params', TREE)['stitch']['bias'], np.ndarray)  # on the host
  checkpoints.save_tree(tmp_path / 'params', {**TREE, 'step': np.int32(8)})  # saved again, as a resumed run does
  assert int(checkpoints.load_tree(tmp_path / 'params', TREE)['step']) == 8


def test_numpy_like_keeps_shapes_and_dtypes_on_the_host():
  like = checkpoints.numpy_like(TREE)
  assert like['head']['kernel'].dtype == jnp.bfloat16 and like['stitch']['kernel'].shape == (2, 3)
  assert all(isinstance(x, np.ndarray) and not x.any() for x in (like['stitch']['kernel'], like['head']['kernel']))


def test_a_tree_of_other_keys_or_shapes_is_refused_by_name(tmp_path):
  checkpoints.save_tree(tmp_path / 'params', TREE)
  path = str(tmp_path / 'params')
  wrong_shape = {**TREE, 'stitch': {**TREE['stitch'], 'kernel': np.zeros((3, 3), np.float32)}}
  with pytest.raises(CheckpointError, match=fr"{path}: key 'stitch/kernel' has shape \(2, 3\), expected \(3, 3\)"):
    checkpoints.load_tree(tmp_path / 'params', wrong_shape)
  with pytest.raises(CheckpointError, match=f"{path}: missing key 'extra'"):
    checkpoints.load_tree(tmp_path / 'params', {**TREE, 'extra': np.zeros(1)})
  with pytest.raises(CheckpointError, match=f"{path}: unexpected key 'step'"):
    checkpoints.load_tree(tmp_path / 'params', {k: v for k, v in TREE.items() if k != 'step'})
  with pytest.raises(CheckpointError, match=f'{tmp_path / "nothing"}: cannot restore the orbax checkpoint'):
    checkpoints.load_tree(tmp_path / 'nothing', TREE)


def test_a_full_disk_is_named_and_leaves_no_checkpoint(tmp_path, monkeypatch):
  def full(*a, **k):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(checkpoints.ocp.StandardCheckpointer, 'save', full)
  with pytest.raises(atomic.DiskFull, match='params'):
    checkpoints.save_tree(tmp_path / 'params', TREE)
  assert not (tmp_path / 'params').exists()
