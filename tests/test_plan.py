"""The plan: what a config would run, read from configs and the workdir, never from weights or data."""
import pathlib
import subprocess
import sys

import pytest

import helpers as H
from stitchjax import backbone, plan

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def config(tmp_path_factory):
  c = H.tiny_config(tmp_path_factory.mktemp('plan'))
  c.train.lrs = '0.01'
  return c


def test_a_plan_reads_configs_not_weights_and_counts_what_is_left(config, monkeypatch, tmp_path):
  monkeypatch.setattr(backbone, 'load_backbone', lambda *a, **k: pytest.fail('the plan loaded weights'))
  c = config.copy_and_resolve_references()
  c.workdir = str(tmp_path / 'fresh')
  one = plan.make(c)
  assert set(one.cells.values()) == {'pending'} and one.units_done == 0
  assert {n: cfg.depth for n, cfg in one.configs.items()} == {'dinov2': 3, 'siglip': 3}
  assert one.split_sizes == {'train': 27, 'val': 9, 'test': 12} and one.cache_bytes > 0
  # The pair and both self-stitches, 4 matched methods each, and the two probes; ffm_tlt shares ffm's matching.
  assert len(one.cells) == 3 * 4 + 2
  assert one.units == 2 + 3 * (2 + 2 + 1 + 1)

  c.train.lrs = '0.01,0.03'
  (tmp_path / 'fresh' / 'cells' / 'dinov2__siglip__L1__ffm__mlp' / 'match').mkdir(parents=True)
  two = plan.make(c)
  # the ffm cell has begun, and so has ffm_tlt, whose matching stage it shares
  assert {cell for cell, status in two.cells.items() if status == 'partial'} == {'dinov2__siglip__L1__ffm__mlp',
                                                                                'dinov2__siglip__L1__ffm_tlt__mlp'}
  assert two.units == 2 * one.units and two.units_done == 0


@pytest.mark.parametrize('field, value, message', [
    ('layers', '1,x', r"config.layers: entry 'x' is not an integer \(in '1,x'\)"),
    ('layers', '1,2.5', r"config.layers: entry '2.5' is not an integer"),
    ('layers', '1,3', r"config.layers: layer 3 is outside 1..2 for backbone 'dinov2'"),
    ('train.lrs', '0.01,fast', r"config.train.lrs: entry 'fast' is not a number"),
])
def test_a_plan_names_the_field_and_entry_that_is_wrong(config, field, value, message):
  c = config.copy_and_resolve_references()
  *parents, name = field.split('.')
  target = c
  for parent in parents:
    target = target[parent]
  target[name] = value
  with pytest.raises(ValueError, match=message):
    plan.make(c)


def test_the_plan_job_takes_command_line_overrides_and_plans_without_weights_or_data():
  result = subprocess.run([sys.executable, 'run.py', '--config', 'configs/fmow.py', '--config.job=plan',
                           '--config.layers=14,22', '--config.pairs=dinov2:clip', '--config.methods=lp,ffm_tlt'],
                          cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  cells = dict(line.split() for line in result.stdout.splitlines() if line.endswith(('pending', 'partial', 'done')))
  assert cells['lp__clip'] == cells['dinov2__clip__L22__ffm_tlt__mlp'] == cells['clip__clip__L14__ffm_tlt__mlp'] == 'pending'
  assert not any('siglip2' in cell or 'L2_' in cell for cell in cells)
  # The paper's checkpoints and fMoW are not on this machine: the plan says so and plans the rest.
  assert 'dinov2: not read (checkpoints/dinov2-large: no such file or directory' in result.stdout
  assert 'data: not readable here' in result.stdout and 'feature cache size unknown' in result.stdout
