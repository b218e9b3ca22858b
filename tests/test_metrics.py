"""stitchjax/metrics.py: what a run records while it trains (metrics.jsonl, TensorBoard, timestamped lines
off a terminal) and what the workdir keeps of each invocation (config.json, run_info.json)."""
import json
import pathlib
import re
import struct
import subprocess
import sys

import pytest

import helpers as H
from stitchjax import metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIELDS = {'time', 'unit', 'epoch', 'steps', 'train_loss', 'val_score', 'lr', 'seconds', 'images_per_s'}
STAMP = r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d'


def _events(directory: pathlib.Path) -> dict:
  """{tag: [(step, value)]} from TensorBoard event files: TFRecord framing (length, crc, data, crc)."""
  from tensorboardX.proto import event_pb2
  found = {}
  for path in directory.rglob('events.out.tfevents.*'):
    raw = path.read_bytes()
    while raw:
      (length,) = struct.unpack('<Q', raw[:8])
      event = event_pb2.Event.FromString(raw[12:12 + length])
      raw = raw[12 + length + 4:]
      for value in event.summary.value:
        found.setdefault(value.tag, []).append((event.step, value.simple_value))
  return found


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """One tiny run through run.py, its stderr a pipe (not a terminal), then a resumed re-run at --verbosity=0."""
  root = tmp_path_factory.mktemp('metrics')
  config = H.run_config(root, {'train': 8, 'test': 3}, methods='lp,ffm_tlt', epochs=2, lrs='0.01,0.03', export='')
  command = [sys.executable, 'run.py', '--config', str(config), f'--config.workdir={root / "work"}']
  first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
  assert first.returncode == 0, first.stderr[-3000:]
  second = subprocess.run([*command, '--verbosity=0'], cwd=ROOT, capture_output=True, text=True)
  assert second.returncode == 0, second.stderr[-3000:]
  return root / 'work', first.stderr, second.stderr


def test_every_epoch_of_every_unit_is_a_json_line(run):
  work, _, _ = run
  records = metrics.read(work)
  units = {r['unit'] for r in records}
  # Five cells (lp of a and of b, the self-stitches a->a and b->b, a->b): two lp units and, per stitch,
  # ffm_tlt's ffm stage and tlt stage, each at both learning rates.
  assert len(units) == (2 + 3 * 2) * 2, units
  for r in records:
    assert set(r) == FIELDS, r
    assert r['lr'] == float(r['unit'].rsplit('lr=', 1)[1]) and r['images_per_s'] > 0 and r['seconds'] > 0
  for unit in units:
    epochs = [r for r in records if r['unit'] == unit]
    assert [r['epoch'] for r in epochs] == [1, 2]
    assert epochs[1]['steps'] == 2 * epochs[0]['steps'] > 0


def test_a_resumed_run_trains_and_logs_nothing_again(run):
  work, _, _ = run
  lines = (work / 'metrics.jsonl').read_text().splitlines()
  assert len(lines) == len(metrics.read(work)) == 16 * 2


def test_off_a_terminal_timestamped_lines_replace_the_bars(run):
  _, stderr, _ = run
  assert '%|' not in stderr and '\r' not in stderr
  epochs = re.findall(rf'^{STAMP} (.+): epoch (\d), loss \S+, val \S+, \d+ img/s$', stderr, re.M)
  assert len(epochs) == 32, stderr[-2000:]
  assert len(re.findall(rf'^{STAMP} .+ lr=\S+: done after 2 epochs, best val \S+$', stderr, re.M)) == 16
  assert len(re.findall(rf'^{STAMP} cell \d/5 \S+: done$', stderr, re.M)) == 5


def test_tensorboard_events_hold_the_same_scalars(run):
  work, _, _ = run
  events = _events(work / 'tensorboard')
  records = metrics.read(work)
  assert len(events['val_score']) == len(records)
  assert sorted(v for _, v in events['train_loss']) == pytest.approx(sorted(r['train_loss'] for r in records), rel=1e-6)
  assert sorted(s for s, _ in events['images_per_s']) == sorted(r['steps'] for r in records)


def test_the_workdir_keeps_the_config_and_each_invocation(run):
  work, _, _ = run
  config = json.loads((work / 'config.json').read_text())
  assert config['methods'] == 'lp,ffm_tlt' and config['train']['lrs'] == '0.01,0.03'
  invocations = json.loads((work / 'run_info.json').read_text())
  assert len(invocations) == 2 and invocations[1]['argv'][-1] == '--verbosity=0'
  for entry in invocations:
    assert {'jax', 'flax', 'numpy', 'stitchjax'} <= set(entry['packages'])
    assert entry['devices'] and entry['processes'] == 1


def test_the_users_verbosity_is_respected(run):
  _, quiet, verbose = run
  info = re.compile(r'^I\d{4} ', re.M)  # absl's INFO prefix
  assert not info.search(quiet)
  assert info.search(verbose)
