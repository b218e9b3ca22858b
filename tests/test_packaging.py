"""Packaging: the declared runtime dependencies are exactly what the library imports, and the library
runs without its optional packages."""
import ast
import importlib.metadata
import json
import pathlib
import re
import subprocess
import sys
import tomllib

import helpers as H

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Imported only inside the functions that need them, and declared as extras (or, for torch, optional:
# the .pth reader falls back to a restricted unpickler without it).
OPTIONAL = {'tensorflow_datasets': 'data', 'torch': 'test', 'huggingface_hub': 'hub', 'tensorboardX': 'tensorboard'}
# Declared for what the library asks of jax, which imports them only when asked.
FOR_JAX = {'filelock'}  # jax_compilation_cache_max_size (stitchjax.workdir.compilation_cache)


def _project() -> dict:
  return tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']


def _name(requirement: str) -> str:
  return re.split(r'[\s<>=!~;\[]', requirement, maxsplit=1)[0].lower().replace('_', '-')


def _imports() -> dict[str, set[str]]:
  """Third-party top-level modules imported by stitchjax/, convert/ and run.py -> {'module', 'function'}:
  where the import statements stand."""
  found = {}
  for path in [*ROOT.glob('stitchjax/**/*.py'), *ROOT.glob('convert/**/*.py'), ROOT / 'run.py']:
    tree = ast.parse(path.read_text())
    top_level = set(map(id, tree.body))
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        names = [node.module]
      else:
        continue
      for name in names:
        top = name.split('.')[0]
        if top not in sys.stdlib_module_names and top not in ('stitchjax', 'convert'):
          found.setdefault(top, set()).add('module' if id(node) in top_level else 'function')
  return found


def test_runtime_dependencies_are_what_the_library_imports():
  distributions = importlib.metadata.packages_distributions()
  imported = {m: {d.lower().replace('_', '-') for d in distributions[m]} for m in _imports()}
  declared = {_name(r) for r in _project()['dependencies']}
  required = {m: dists for m, dists in imported.items() if m not in OPTIONAL}
  undeclared = {m: dists for m, dists in required.items() if not dists & declared}
  assert not undeclared, f'imported at run time but not in [project] dependencies: {undeclared}'
  unused = declared - set().union(*required.values()) - FOR_JAX
  assert not unused, f'declared but never imported by the library: {unused}'


def test_optional_packages_are_imported_lazily_and_declared_as_extras():
  extras = {name: {_name(r) for r in reqs} for name, reqs in _project()['optional-dependencies'].items()}
  distributions = importlib.metadata.packages_distributions()
  found = _imports()
  for module, extra in OPTIONAL.items():
    assert found[module] == {'function'}, f'{module} is imported at module level'
    assert {_name(d) for d in distributions[module]} & extras[extra], f'{module} is not in the {extra!r} extra'
  assert not {'jax', 'jaxlib'} & {_name(r) for r in _project()['dependencies'] if '==' in r}, 'jax is pinned'


BLOCKED = '''
import importlib.abc, json, sys
BLOCKED = {'tensorflow_datasets', 'torch', 'transformers', 'huggingface_hub', 'tensorboardX'}

class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in BLOCKED:
      raise ImportError(f'No module named {name!r} (blocked by the test)')

sys.meta_path.insert(0, Block())
from stitchjax import config_lib, jobs
c = config_lib.stitching(sys.argv[1], dict(kind='image_folder', root=sys.argv[2], val_fraction=0.25, seed=0),
                         backbones={'a': {'path': sys.argv[3], 'image_size': 32}})
c.pairs, c.layers, c.methods, c.dtype, c.export = 'a:a', '1', 'lp,ffm', 'float32', ''
c.train.epochs, c.train.patience, c.train.lrs = 1, 1, '0.01'
c.train.batch_size = {'lfm': 8, 'default': 8}
jobs.run(c)
c.data = dict(kind='tfds', name='mnist', root=sys.argv[2])
try:
  jobs.run(c)
except ImportError as e:
  print(json.dumps({'error': str(e), 'loaded': sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED)}))
'''


def test_a_stitch_cell_runs_without_the_optional_packages(tmp_path):
  H.build('siglip', tmp_path / 'a')
  H.image_folder(tmp_path / 'data', {'train': 4, 'test': 2})
  result = subprocess.run([sys.executable, '-c', BLOCKED, str(tmp_path / 'work'), str(tmp_path / 'data'),
                           str(tmp_path / 'a')], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert "needs the 'data' extra: pip install 'stitchjax[data]'" in out['error']
  assert out['loaded'] == []
  records = json.loads((tmp_path / 'work' / 'results.json').read_text())
  assert {r['method'] for r in records if r['metric'] == 'accuracy'} == {'lp', 'ffm'}
