"""What every checkpoint layout shares: a key-tracking reader and assembly into the stacked ViT tree.

A converter reads one flat `name -> array` map, moves arrays to stitchjax names
with `Reader.put`, and hands the reader to `assemble`. Assembly checks every
expected parameter against the shapes `stitchjax.vit.init_params` would create,
stacks the per-layer arrays on a leading axis, and refuses leftovers: a
checkpoint is either loaded whole or not at all.
"""
import json
import re

import jax
import numpy as np

from stitchjax import vit


class CheckpointError(ValueError):
  """A checkpoint that cannot be loaded exactly; the message names the file and the key."""


def read_config(directory) -> dict:
  """A checkpoint directory's config.json (transformers' or timm's)."""
  path = directory / 'config.json'
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f'{path}: cannot read the model config ({e})') from e


class Reader:
  """A flat map of arrays read from `path` that remembers which keys were used."""

  def __init__(self, path, arrays: dict):
    self.path = str(path)
    self.arrays = arrays
    self.used = set()
    self.out = {}  # stitchjax key ('blocks/3/attn/q/kernel') -> array
    self.origin = {}  # stitchjax key -> checkpoint key, for error messages

  def error(self, message: str) -> CheckpointError:
    return CheckpointError(f'{self.path}: {message}')

  def has(self, key: str) -> bool:
    return key in self.arrays

  def get(self, key: str) -> np.ndarray:
    if key not in self.arrays:
      raise self.error(f'missing key {key!r}')
    self.used.add(key)
    try:
      return np.asarray(self.arrays[key], dtype=np.float32)
    except Exception as e:  # a truncated lazily-read tensor fails here
      raise self.error(f'cannot read key {key!r}: {e}') from e

  def put(self, ours: str, key: str, fn=None):
    value = self.get(key)
    try:
      self.out[ours] = value if fn is None else fn(value)
    except ValueError as e:  # a reshape or split that does not fit
      raise self.error(f'key {key!r} has shape {value.shape}, which does not fit {ours}: {e}') from e
    self.origin[ours] = key

  def set(self, ours: str, value: np.ndarray, key: str):
    """Stores a value derived from one or more checkpoint keys (`key` names them for errors)."""
    self.out[ours] = value
    self.origin[ours] = key

  def check_all_used(self, ignore=()):
    """Raises on keys nothing consumed, except those matching an `ignore` regex."""
    left = sorted(k for k in self.arrays if k not in self.used and not any(re.search(p, k) for p in ignore))
    if left:
      shown = ', '.join(repr(k) for k in left[:8]) + (f' and {len(left) - 8} more' if len(left) > 8 else '')
      raise self.error(f'unexpected keys {shown}; refusing to load part of the checkpoint')


def linear(w):
  """torch Linear weight (out, in) -> flax Dense kernel (in, out)."""
  return w.T


def conv(w):
  """torch Conv2d weight (D, C, p, p) -> flax Conv kernel (p, p, C, D)."""
  return w.transpose(2, 3, 1, 0)


def flat_paths(tree) -> dict:
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def expected_shapes(cfg) -> dict:
  """stitchjax key -> shape, with 'blocks/...' entries per layer (no stacking axis)."""
  shapes = jax.eval_shape(lambda: vit.init_params(cfg, jax.random.key(0)))  # the key too: nothing compiles
  out = {}
  for key, leaf in flat_paths(shapes).items():
    if key.startswith('blocks/'):
      for i in range(cfg.depth):
        out[f'blocks/{i}/{key[7:]}'] = leaf.shape[1:]
    else:
      out[key] = leaf.shape
  return out


def assemble(cfg, reader: Reader) -> dict:
  """Checks the reader's output against cfg and returns the nested, stacked float32 params."""
  want = expected_shapes(cfg)
  for key, shape in want.items():
    if key not in reader.out:
      raise reader.error(f'no checkpoint key provides {key} (shape {shape}) for this {cfg.family} config')
    got = reader.out[key].shape
    if tuple(got) != tuple(shape):
      raise reader.error(f'key {reader.origin[key]!r} gives {key} shape {tuple(got)}, expected {tuple(shape)}')
  extra = sorted(set(reader.out) - set(want))
  if extra:
    raise reader.error(f'keys {[reader.origin[k] for k in extra]} have no place in this {cfg.family} config')
  tree = {}
  for key in want:
    if key.startswith('blocks/'):
      i, rest = key[7:].split('/', 1)
      if i != '0':
        continue
      value = np.stack([reader.out[f'blocks/{j}/{rest}'] for j in range(cfg.depth)])
      key = f'blocks/{rest}'
    else:
      value = reader.out[key]
    node = tree
    *parents, leaf = key.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = np.ascontiguousarray(value, dtype=np.float32)
  return tree


# Key maps shared by the layouts that store torch Linear / LayerNorm weights.
def dense(r: Reader, key: str, ours: str):
  r.put(ours + '/kernel', key + '.weight', linear)
  if r.has(key + '.bias'):
    r.put(ours + '/bias', key + '.bias')


def norm(r: Reader, key: str, ours: str, bias: bool = True):
  """A LayerNorm's weight and bias, or an RMSNorm's weight alone (bias=False)."""
  r.put(ours + '/scale', key + '.weight')
  if bias:
    r.put(ours + '/bias', key + '.bias')


def split(r: Reader, key: str, targets: list[str]):
  """One checkpoint tensor that stacks several of ours on its first axis (fused qkv, SwiGLU's w12)."""
  value = r.get(key)
  if value.ndim not in (1, 2) or len(value) % len(targets):
    raise r.error(f'key {key!r} has shape {value.shape}, which does not split into {len(targets)} equal parts')
  is_weight = value.ndim == 2
  for target, chunk in zip(targets, np.split(value, len(targets), axis=0)):
    r.set(target + ('/kernel' if is_weight else '/bias'), linear(chunk) if is_weight else chunk, key)
