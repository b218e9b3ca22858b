"""run.py's jobs: chosen by config.job, and the backbones job end to end (the others: test_protocol,
test_plan, test_tree, test_pretrain, test_analysis)."""
import json

import ml_collections
import pytest

import helpers as H
from stitchjax import backbone, jobs


def test_an_unknown_job_is_named():
  with pytest.raises(ValueError, match=r"config.job='stich' is not one of \['backbones', 'plan', 'pretrain', "):
    jobs.run(ml_collections.ConfigDict({'job': 'stich'}))


def test_the_backbones_job_exports_reloads_and_checks_every_split(tmp_path, capsys):
  H.build('dinov2_registers', tmp_path / 'dinov2')
  config = ml_collections.ConfigDict({
      'job': 'backbones', 'workdir': str(tmp_path / 'work'), 'seed': 0, 'batch_size': 2, 'num_images': 4,
      'backbones': {'dinov2': {'path': str(tmp_path / 'dinov2'), 'image_size': 28}}})
  jobs.run(config)
  [row] = json.loads((tmp_path / 'work' / 'backbones.json').read_text())
  assert (row['name'], row['family'], row['depth'], row['image_size'], row['random_init']) == ('dinov2', 'dinov2', 3,
                                                                                              28, False)
  assert row['num_prefix_tokens'] == 1 + H.CASES['dinov2_registers']().config.num_register_tokens
  assert row['max_split_rel_err'] <= 1e-5 and len(row['token_norm_per_layer']) == 4
  assert all(n > 0 for n in row['token_norm_per_layer']) and row['images_per_s'] > 0
  exported = backbone.load_backbone(tmp_path / 'work' / 'backbones' / 'dinov2')
  assert exported.config == backbone.load_backbone(tmp_path / 'dinov2', image_size=28).config
  assert '| dinov2 | dinov2 | 3 |' in capsys.readouterr().out
