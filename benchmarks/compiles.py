"""XLA compilations of a small stitching sweep, and the share of its wall time they take.

    python benchmarks/compiles.py                       # this checkout
    python benchmarks/compiles.py --repo ../old-checkout # another checkout of stitchjax, same run

The run: two tiny models with the real layouts of transformers' DINOv2 (registers) and SigLIP
(tests/helpers.py: width 32, 3 blocks, random weights), one pair, layer 1, a linear stitch,
methods lp and ffm_tlt (5 cells: two probes and three ffm_tlt cells, self-stitches included),
three learning rates, float32, on a synthetic image folder. Three runs, each in a fresh process:

- cold: an empty workdir;
- resumed: the same workdir again with every trained cell deleted (features and XLA's persistent
  compilation cache kept), i.e. what a re-run after a crash or a change of schedule pays;
- done: the finished workdir again (every cell is reused).

Each reports the compilations (XLA backend compiles), their seconds, the seconds spent tracing
and lowering, persistent-cache hits and the wall time, from JAX's monitoring events.
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHILD = r'''
import json, sys, time
sys.path.insert(0, {repo!r})
from jax import monitoring
from jax._src import dispatch
counts = {{'compiles': 0, 'compile_s': 0.0, 'trace_lower_s': 0.0, 'cache_hits': 0}}
def duration(event, seconds, **kw):
  if event == dispatch.BACKEND_COMPILE_EVENT:
    counts['compiles'] += 1
    counts['compile_s'] += seconds
  elif event in (dispatch.JAXPR_TRACE_EVENT, dispatch.JAXPR_TO_MLIR_MODULE_EVENT):
    counts['trace_lower_s'] += seconds
def event(name, **kw):
  if name == '/jax/compilation_cache/cache_hits':
    counts['cache_hits'] += 1
monitoring.register_event_duration_secs_listener(duration)
monitoring.register_event_listener(event)
start = time.perf_counter()
from stitchjax import config_lib, protocol
c = config_lib.stitching({workdir!r}, dict(kind='image_folder', root={data!r}, val_fraction=0.25, seed=0),
                         backbones={{'a': {{'path': {a!r}, 'image_size': 42}}, 'b': {{'path': {b!r}, 'image_size': 32}}}})
c.pairs, c.layers, c.methods, c.stitch_layer, c.dtype = 'a:b', '1', 'lp,ffm_tlt', 'linear', 'float32'
c.train.epochs, c.train.patience, c.train.lrs = 6, 3, '0.001,0.005,0.01'
c.train.batch_size = {{'lfm': 16, 'default': 16}}
c.feature_batch_size, c.export = 16, ''
records = protocol.run(c)
counts['wall_s'] = time.perf_counter() - start
counts['test_accuracy'] = {{f"{{r['source']}}>{{r['target']}}:{{r['method']}}": round(r['value'], 4)
                           for r in records if r['split'] == 'test' and r['metric'] == 'accuracy'}}
print('RESULT', json.dumps(counts))
'''


def _run(repo: pathlib.Path, root: pathlib.Path) -> dict:
  code = CHILD.format(repo=str(repo), workdir=str(root / 'work'), data=str(root / 'data'), a=str(root / 'a'),
                      b=str(root / 'b'))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get('PYTHONPATH')])))
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, cwd=repo)
  if out.returncode:
    sys.exit(f'the run failed:\n{out.stderr[-4000:]}')
  return json.loads(next(l for l in out.stdout.splitlines() if l.startswith('RESULT '))[len('RESULT '):])


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--repo', default=str(ROOT), help='the stitchjax checkout to measure')
  p.add_argument('--root', default='', help='working directory (default: a temporary one, removed)')
  args = p.parse_args()
  sys.path.insert(0, str(ROOT / 'tests'))
  import helpers
  root = pathlib.Path(args.root or tempfile.mkdtemp())
  helpers.tiny_pair(root, {'train': 24, 'test': 8})
  repo = pathlib.Path(args.repo).resolve()
  print(f'# {repo} ({subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()}), '
        f'{time.strftime("%Y-%m-%d")}, {os.cpu_count()} cores')
  print('| run | compilations | compile s | trace+lower s | cache hits | wall s | compile share | test accuracy |')
  print('|---|---|---|---|---|---|---|---|')
  for name in ('cold', 'resumed', 'done'):
    if name == 'resumed':
      shutil.rmtree(root / 'work' / 'cells')
    r = _run(repo, root)
    share = (r['compile_s'] + r['trace_lower_s']) / r['wall_s']
    print(f"| {name} | {r['compiles']} | {r['compile_s']:.1f} | {r['trace_lower_s']:.1f} | {r['cache_hits']} | "
          f"{r['wall_s']:.1f} | {100 * share:.0f}% | {r['test_accuracy']} |", flush=True)
  if not args.root:
    shutil.rmtree(root)


if __name__ == '__main__':
  main()
