"""Backbones: exports that reload exactly (at any size, as their source would), configs read without
weights, seeded 'init:' layouts, and what is refused."""
import jax
import ml_collections
import numpy as np
import pytest

import helpers as H
from stitchjax import backbone


@pytest.fixture(scope='module')
def dinov2(tmp_path_factory):
  path = tmp_path_factory.mktemp('dinov2')
  H.build('dinov2_registers', path)
  return path


def test_an_export_reloads_exactly_and_resizes_as_its_source_would(dinov2, tmp_path):
  bb = backbone.load_backbone(dinov2)
  backbone.save_backbone(bb, tmp_path / 'export')
  again = backbone.load_backbone(tmp_path / 'export')
  assert again.config == bb.config and again.preprocessing == bb.preprocessing
  jax.tree.map(np.testing.assert_array_equal, again.params, bb.params)
  resized, reference = backbone.load_backbone(tmp_path / 'export', image_size=56), backbone.load_backbone(dinov2, image_size=56)
  assert resized.config == reference.config and resized.config.image_size == 56
  jax.tree.map(np.testing.assert_array_equal, resized.params, reference.params)
  with pytest.raises(FileExistsError, match='pass overwrite=True'):
    backbone.save_backbone(bb, tmp_path / 'export')
  backbone.save_backbone(bb, tmp_path / 'export', overwrite=True)


def test_describe_reads_the_config_and_no_weights(dinov2, monkeypatch):
  loaded = backbone.load_backbone(dinov2, image_size=42).config
  monkeypatch.setattr(backbone, 'load_checkpoint', lambda *a, **k: pytest.fail('describe read the weights'))
  assert backbone.describe(dinov2, image_size=42) == loaded


def test_init_layouts_are_seeded_and_unknown_ones_named():
  spec = ml_collections.ConfigDict({'path': 'init:siglip', 'image_size': 32})
  one, same, other = (backbone.configured('s', spec, seed) for seed in (0, 0, 1))
  assert one.config.family == 'siglip' and one.config.image_size == 32
  jax.tree.map(np.testing.assert_array_equal, one.params, same.params)
  assert not np.array_equal(one.params['embed']['patch']['kernel'], other.params['embed']['patch']['kernel'])
  with pytest.raises(ValueError, match=r"backbones.s.path='init:vit': unknown layout; expected init:\{dinov2,"):
    backbone.configured('s', ml_collections.ConfigDict({'path': 'init:vit'}), 0)


def test_an_unsupported_dtype_is_named(dinov2):
  with pytest.raises(ValueError, match=r"dtype='float16' is not supported; use one of"):
    backbone.load_backbone(dinov2, dtype='float16')
