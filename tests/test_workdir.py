"""The workdir: one run at a time, and a run that does not match what the workdir holds is refused."""
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from stitchjax import workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]

HOLD_LOCK = '''
import sys, time
from stitchjax import workdir
with workdir.lock(sys.argv[1]):
  print('locked', flush=True)
  time.sleep(60)
'''


def _holder(root):
  p = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, str(root)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  assert p.stdout.readline().strip() == 'locked'
  return p


def test_a_second_run_on_a_workdir_stops_naming_the_lock_and_holder(tmp_path):
  p = _holder(tmp_path)
  try:
    with pytest.raises(RuntimeError, match=rf'{tmp_path}/.lock is held by pid {p.pid} on '):
      with workdir.lock(tmp_path):
        pass
  finally:
    p.kill()
    p.wait()


def test_a_killed_runs_lock_is_taken_over(tmp_path):
  p = _holder(tmp_path)
  os.kill(p.pid, signal.SIGKILL)
  p.wait()
  with pytest.warns(UserWarning, match=f'taking over the lock .* left by pid {p.pid}'):
    with workdir.lock(tmp_path):
      pass


def test_identity_is_recorded_then_checked_field_by_field(tmp_path):
  identity = {'classes': ['a', 'b'], 'splits': {'train': 'x'}, 'backbones': {'p': {'params': 'd1'}}, 'seed': 0}
  workdir.check_identity(tmp_path, identity)
  workdir.check_identity(tmp_path, identity | {'backbones': {'q': {'params': 'd2'}}})  # a new backbone joins
  with pytest.raises(ValueError, match=r"different seed \(\['seed'\]\)"):
    workdir.check_identity(tmp_path, identity | {'seed': 1})
  with pytest.raises(ValueError, match=r"different backbones \(\['p'\]\)"):
    workdir.check_identity(tmp_path, identity | {'backbones': {'p': {'params': 'other'}}})
  with pytest.raises(ValueError, match='class-count mismatch'):
    workdir.check_identity(tmp_path, identity | {'classes': ['a']})


def test_a_backbone_recorded_before_the_later_vit_fields_is_the_same_backbone(tmp_path):
  """ViTConfig fields added since (vit.LATER_FIELDS) are left out of identities at their defaults, so a
  workdir (and a feature cache, keyed alike) written before them still matches; a model that uses one
  differs."""
  import dataclasses
  from stitchjax import preprocess, vit
  from stitchjax.backbone import Backbone
  cfg = vit.ViTConfig(family='dinov2', depth=2, dim=8, heads=2, mlp_dim=16, patch_size=14, image_size=28)
  bb = Backbone(cfg, {}, preprocess.for_family('dinov2', 28))
  now = workdir.backbone_identity(bb, 'digest')
  earlier = now | {'config': {k: v for k, v in cfg.to_dict().items() if k not in vit.LATER_FIELDS}}
  workdir.check_identity(tmp_path, {'classes': ['x'], 'backbones': {'a': earlier}})
  workdir.check_identity(tmp_path, {'classes': ['x'], 'backbones': {'a': now}})
  rms = workdir.backbone_identity(dataclasses.replace(bb, config=dataclasses.replace(cfg, norm='rms')), 'digest')
  assert rms['config']['norm'] == 'rms'
  with pytest.raises(ValueError, match=r"different backbones \(\['a'\]\)"):
    workdir.check_identity(tmp_path, {'classes': ['x'], 'backbones': {'a': rms}})
