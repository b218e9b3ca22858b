"""What a run records while it trains, written by process 0 as big_vision does.

- `<workdir>/metrics.jsonl`: one JSON line per epoch of every training unit (a stage of a cell
  at one learning rate): time, unit, epoch, steps, train_loss, val_score, lr, seconds (the
  epoch's training and validation) and images_per_s (training images per second).
- `<workdir>/tensorboard/`: the same scalars as TensorBoard event files, per unit, when
  tensorboardX is installed (`pip install 'stitchjax[tensorboard]'`).
- On stderr: progress bars on a terminal. Elsewhere (a SLURM log, a pipe) the bars are off and
  each epoch and each finished unit print one timestamped line instead.
- `<workdir>/config.json` and `<workdir>/run_info.json` (`record_run`): the full config, and the
  command line, package versions and devices of every invocation of the run, newest last.

    import pandas as pd
    pd.read_json('workdir/demo/metrics.jsonl', lines=True).groupby('unit').val_score.max()
"""
import datetime
import importlib.metadata
import json
import pathlib
import platform
import sys

import jax

from stitchjax import atomic, distributed

SCALARS = ('train_loss', 'val_score', 'lr', 'images_per_s')
PACKAGES = ('stitchjax', 'jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy', 'ml-collections',
            'transformers', 'torch', 'tensorflow-datasets')


def _now() -> str:
  return datetime.datetime.now().isoformat(timespec='seconds')


def say(line: str) -> None:
  """One timestamped line on stderr from process 0, where progress bars are off (distributed.progress)."""
  if distributed.is_main() and not distributed.interactive():
    print(f'{_now()} {line}', file=sys.stderr, flush=True)


class Log:
  """Epoch records of one run's training units: metrics.jsonl, TensorBoard and, off a terminal, stderr."""

  def __init__(self, workdir):
    self.path = pathlib.Path(workdir) / 'metrics.jsonl'
    self._writers = {}
    self._tensorboard = _tensorboard_writer() if distributed.is_main() else None
    self._tensorboard_dir = pathlib.Path(workdir) / 'tensorboard'

  def __call__(self, record: dict) -> None:
    say(f"{record['unit']}: epoch {record['epoch']}, loss {record['train_loss']:.4g}, val {record['val_score']:.4g}, "
        f"{record['images_per_s']:.0f} img/s")
    if not distributed.is_main():
      return
    with open(self.path, 'a') as f:  # a line per write: a killed run leaves at most one partial last line
      f.write(json.dumps({'time': _now()} | record) + '\n')
    if self._tensorboard is not None:
      unit = record['unit']
      if unit not in self._writers:
        self._writers[unit] = self._tensorboard(str(self._tensorboard_dir / _safe(unit)))
      for name in SCALARS:
        self._writers[unit].add_scalar(name, record[name], record['steps'])
      self._writers[unit].flush()

  def end(self, unit: str, summary: str) -> None:
    """A unit has finished: its line off a terminal, and its TensorBoard file closed (a paper-scale sweep
    has hundreds of units, too many files to keep open)."""
    say(f'{unit}: {summary}')
    writer = self._writers.pop(unit, None)
    if writer is not None:
      writer.close()


def read(workdir) -> list[dict]:
  """The records of metrics.jsonl; a partial last line (a run killed mid-write) is skipped."""
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return records


def _tensorboard_writer():
  try:
    from tensorboardX import SummaryWriter
  except ImportError:
    return None
  return SummaryWriter


def _safe(unit: str) -> str:
  return ''.join(c if c.isalnum() or c in '._-' else '_' for c in unit)


def record_run(workdir, config, argv: list[str]) -> None:
  """Writes the invocation's full config to <workdir>/config.json and appends its command line, package
  versions and devices to <workdir>/run_info.json (one entry per invocation: a resumed run adds one)."""
  if not distributed.is_main():
    return
  workdir = pathlib.Path(workdir)
  atomic.write_text(workdir / 'config.json', config.to_json_best_effort(indent=2))
  path = workdir / 'run_info.json'
  runs = json.loads(path.read_text()) if path.exists() else []
  runs.append({'time': _now(), 'argv': list(argv), 'python': platform.python_version(), 'packages': _versions(),
               'devices': [str(d) for d in jax.devices()], 'processes': jax.process_count()})
  atomic.write_text(path, json.dumps(runs, indent=2))


def _versions() -> dict:
  found = {}
  for name in PACKAGES:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return found
