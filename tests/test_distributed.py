"""Several JAX processes as one run: two processes on this machine (127.0.0.1 coordinator, gloo collectives)
that lose a process mid-run and are started again, against one process."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import helpers as H

ROOT = pathlib.Path(__file__).resolve().parents[1]



@pytest.fixture(scope='module')
def config(tmp_path_factory):
  return H.run_config(tmp_path_factory.mktemp('distributed'), {'train': 8, 'test': 5}, methods='lp,ffm,tlt', epochs=2,
                      lrs='0.01,0.03', export='tlt')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(config, workdir, processes: int) -> list[subprocess.Popen]:
  """run.py as `processes` processes of one run, each with one CPU device."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  port = _free_port()
  command = [sys.executable, 'run.py', '--config', str(config), f'--config.workdir={workdir}']
  if processes > 1:
    command += ['--config.distributed=True', f'--config.coordinator_address=127.0.0.1:{port}',
                f'--config.num_processes={processes}']
  return [subprocess.Popen(command + ([f'--config.process_id={i}'] if processes > 1 else []), cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(processes)]


def _finish(procs: list[subprocess.Popen]) -> list[str]:
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  return [out for out, _ in outs]


def _records(workdir) -> dict:
  records = json.loads((pathlib.Path(workdir) / 'results.json').read_text())
  return {(r['source'], r['target'], r['layer'], r['method'], r['split'], r['metric']): r for r in records}


def _assert_same_results(got: dict, want: dict) -> None:
  assert got.keys() == want.keys()
  for key, r in want.items():
    if r['metric'] == 'accuracy' and r['split'] == 'test':  # within one test example
      assert abs(got[key]['value'] - r['value']) <= 1 / r['n'] + 1e-9, key
    else:
      np.testing.assert_allclose(got[key]['value'], r['value'], rtol=1e-4, atol=1e-6, err_msg=str(key))


@pytest.fixture(scope='module')
def single(config, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('single') / 'work'
  _finish(_start(config, workdir, 1))
  return _records(workdir)


def test_two_processes_that_lose_a_process_and_restart_give_the_results_of_one(config, single, tmp_path):
  """The resumed run finishes what the killed one started, so together they are one two-process run."""
  work = tmp_path / 'work'
  procs = _start(config, work, 2)
  deadline = time.monotonic() + 300
  while not list((work / 'cells').glob('*/result.json')) and time.monotonic() < deadline:
    assert all(p.poll() is None for p in procs), [p.communicate()[1][-3000:] for p in procs]
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGKILL)  # one process dies mid-run; the scheduler then stops the job (srun does)
  time.sleep(1)
  procs[0].send_signal(signal.SIGKILL)
  for p in procs:
    p.communicate()
  assert not (work / 'results.json').exists() or len(_records(work)) < len(single)
  outs = _finish(_start(config, work, 2))
  _assert_same_results(_records(work), single)
  # Process 0 reports; the other prints nothing of ours (gloo's C++ connection line is not ours to silence).
  assert 'records in' in outs[0] and [l for l in outs[1].splitlines() if not l.startswith('[Gloo]')] == []
  assert (work / 'results.csv').exists() and (work / 'exports').exists()
  # Each example's features were computed by one process: the cache holds one entry per (backbone, split).
  entries = [p for p in (work / 'cache').iterdir() if len(p.name) == 64]
  assert len(entries) == 2 * 3
