"""Wall time of the embedded demo from an empty workdir, as a new user runs it.

    python benchmarks/demo.py [--workdir /tmp/demo_bench]

Runs `python run.py --config configs/demo.py --config.workdir=WORKDIR` in a subprocess
(the README's command, with only the workdir moved so that nothing cached is reused), then
prints the wall time, the child's peak resident memory, the number of cells and records,
and the device and versions. The demo's target is 10 minutes on 2 CPU cores (issue 4).
"""
import argparse
import datetime
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import jax

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default=None, help='an empty or absent directory (default: a temporary one)')
  args = parser.parse_args()
  workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix='demo_bench_')) / 'demo'
  if workdir.exists() and any(workdir.iterdir()):
    sys.exit(f'{workdir} is not empty: the benchmark times a run from scratch')
  command = [sys.executable, 'run.py', '--config', 'configs/demo.py', f'--config.workdir={workdir}']
  start = time.perf_counter()
  subprocess.run(command, cwd=ROOT, check=True)
  seconds = time.perf_counter() - start
  peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux reports KiB
  records = json.loads((workdir / 'results.json').read_text())
  cells = {(r['source'], r['target'], r['layer'], r['method'], r['stitch_layer']) for r in records if r['method']}
  device = jax.devices()[0]
  print(f'\n| wall | peak RSS | cells | records | device | cores | jax | date |\n|---|---|---|---|---|---|---|---|\n'
        f'| {seconds / 60:.1f} min | {peak_mib:.0f} MiB | {len(cells)} | {len(records)} | {device.platform}: '
        f'{device.device_kind} | {os.cpu_count()} | {jax.__version__} | {datetime.date.today()} |')
  print(f'command: {" ".join(command[1:])}')
  if not args.workdir:
    shutil.rmtree(workdir.parent)


if __name__ == '__main__':
  main()
