"""convert/hub.py: a repo id loads its snapshot from the local Hugging Face cache, offline, or names where it looked."""
import jax
import numpy as np
import pytest
from huggingface_hub import constants

import helpers as H
from convert.common import CheckpointError
from stitchjax import load_backbone

COMMIT = '0123456789abcdef0123456789abcdef01234567'


@pytest.fixture
def cached(tmp_path, monkeypatch):
  """The cache layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/...}."""
  cache = tmp_path / 'hub'
  snapshot = cache / 'models--org--tiny-dinov2' / 'snapshots' / COMMIT
  H.build('dinov2', snapshot)
  (cache / 'models--org--tiny-dinov2' / 'refs').mkdir()
  (cache / 'models--org--tiny-dinov2' / 'refs' / 'main').write_text(COMMIT)
  monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
  monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
  return snapshot


@pytest.mark.parametrize('name', ['org/tiny-dinov2', f'org/tiny-dinov2@{COMMIT}', 'org/tiny-dinov2@main'])
def test_a_cached_repo_id_loads_its_snapshot(cached, name):
  by_id, by_path = load_backbone(name), load_backbone(cached)
  assert by_id.config == by_path.config
  assert jax.tree.all(jax.tree.map(np.array_equal, by_id.params, by_path.params))


def test_a_repo_id_missing_from_the_cache_names_where_stitchjax_looked(cached):
  with pytest.raises(CheckpointError, match='models--org--missing.*downloads nothing'):
    load_backbone('org/missing')
  with pytest.raises(CheckpointError, match=f'models--org--tiny-dinov2 for revision {"f" * 40}'):
    load_backbone(f'org/tiny-dinov2@{"f" * 40}')


def test_a_missing_path_is_still_a_missing_path(tmp_path):
  with pytest.raises(CheckpointError, match='no such file or directory'):
    load_backbone(tmp_path / 'nowhere')
