"""Feature cache: frozen-backbone tokens computed once, stored memory-mapped in bfloat16 (paper A.2.2).

The source prefix output at layer n, the target's layer-n and final tokens, and
pooled features depend only on (checkpoint, layer, split, preprocessing). One
pass of a backbone over a split writes every requested layer at once:

    entry = cache.tokens(bb, split, layers=(2, 6), final=True, pooled=True)
    entry['layer_2']   # np.memmap (N, T, D) bfloat16, read batch by batch
    entry['final']     # (N, T, D): the final-normed tokens
    entry['pooled']    # (N, D)

Entries are keyed by a content hash of everything they depend on, written to a
temporary directory, fsynced and renamed into place, and carry the sha256 of their
data files, which is verified when an entry is first opened in a process. A
partial or corrupt entry is rebuilt, never used. `lfm` then needs no backbone
forward at all; `ffm`/`tlt` run only the stitch, the target suffix and the head.
"""
import hashlib
import json
import pathlib
import shutil
import warnings

import jax
import ml_dtypes
import numpy as np
from tqdm import tqdm

from stitchjax import atomic
from stitchjax import data as data_lib

BF16 = ml_dtypes.bfloat16
_VERIFIED = set()  # entries whose checksums this process has checked; only skips re-hashing, never changes data


def digest(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def params_digest(params) -> str:
  """sha256 over every parameter's path, shape, dtype and bytes: the checkpoint's identity."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    a = np.asarray(leaf)
    h.update(f'{jax.tree_util.keystr(path)}:{a.shape}:{a.dtype}'.encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def _file_sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 24), b''):
      h.update(chunk)
  return h.hexdigest()


class Cache:
  """A directory of feature entries, one subdirectory per content hash."""

  def __init__(self, root):
    self.root = pathlib.Path(root)
    self.root.mkdir(parents=True, exist_ok=True)
    self._backbone_digests = {}

  def backbone_digest(self, bb) -> str:
    """params_digest of a backbone, computed once per Backbone object."""
    if id(bb) not in self._backbone_digests:
      self._backbone_digests[id(bb)] = params_digest(bb.params)
    return self._backbone_digests[id(bb)]

  def _open(self, entry: pathlib.Path, key: dict) -> dict | None:
    meta_path = entry / 'meta.json'
    if not meta_path.exists():
      return None
    try:
      meta = json.loads(meta_path.read_text())
      if meta['key'] != json.loads(json.dumps(key, default=str)):
        raise ValueError('key mismatch')
      arrays = {}
      for name, info in meta['arrays'].items():
        path = entry / f'{name}.npy'
        if str(entry) not in _VERIFIED and _file_sha256(path) != info['sha256']:
          raise ValueError(f'{path.name} does not match its checksum')
        arrays[name] = np.load(path, mmap_mode='r').view(BF16)
        if list(arrays[name].shape) != info['shape']:
          raise ValueError(f'{path.name} has shape {arrays[name].shape}, expected {info["shape"]}')
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
      warnings.warn(f'feature cache entry {entry} is corrupt ({e}); rebuilding it')
      shutil.rmtree(entry, ignore_errors=True)
      return None
    _VERIFIED.add(str(entry))
    return arrays

  def tokens(self, bb, bb_name: str, split, split_name: str, *, layers=(), final=False, pooled=False,
             batch_size: int = 64) -> dict:
    """Token features of `bb` on `split`: 'layer_<n>' (N,T,D), 'final' (N,T,D), 'pooled' (N,D); bfloat16."""
    layers = tuple(sorted(set(int(n) for n in layers)))
    key = {'backbone': self.backbone_digest(bb), 'config': bb.config.to_dict() | {'dtype': None},
           'dtype': bb.config.dtype, 'preprocess': bb.preprocessing.to_dict(), 'split': split.fingerprint,
           'layers': layers, 'final': final, 'pooled': pooled}
    entry = self.root / digest(key)
    arrays = self._open(entry, key)
    if arrays is None:
      self._build(entry, key, bb, split, f'{bb_name}/{split_name}', layers, final, pooled, batch_size)
      arrays = self._open(entry, key)
    return arrays

  def _build(self, entry, key, bb, split, desc, layers, final, pooled, batch_size):
    cfg = bb.config
    n = len(split)
    shapes = {f'layer_{l}': (n, cfg.num_tokens, cfg.dim) for l in layers}
    if final:
      shapes['final'] = (n, cfg.num_tokens, cfg.dim)
    if pooled:
      shapes['pooled'] = (n, cfg.dim)
    with atomic.directory(entry) as tmp:
      out = {k: np.lib.format.open_memmap(tmp / f'{k}.npy', mode='w+', dtype=np.uint16, shape=s)
             for k, s in shapes.items()}
      stops = [*layers, cfg.depth] if (final or pooled) else list(layers)
      for images, _, idx in tqdm(data_lib.batches(split, bb.preprocess, batch_size, shuffle=False, seed=0),
                                 total=-(-n // batch_size), desc=f'features {desc}', unit='batch', leave=False):
        valid = len(idx)
        if valid < batch_size:  # pad the last batch: one compiled shape per span, not two
          images = np.concatenate([images, np.zeros((batch_size - valid, *images.shape[1:]), images.dtype)])
        x, start = bb.embed(bb.params, images), 0
        for stop in stops:
          x, start = bb.blocks(bb.params, x, start, stop), stop
          if f'layer_{stop}' in out:
            out[f'layer_{stop}'][idx] = np.asarray(x[:valid].astype(BF16)).view(np.uint16)
        if final or pooled:
          tokens = bb.final(bb.params, x)
          if final:
            out['final'][idx] = np.asarray(tokens[:valid].astype(BF16)).view(np.uint16)
          if pooled:
            out['pooled'][idx] = np.asarray(bb.pool(bb.params, tokens)[:valid].astype(BF16)).view(np.uint16)
      meta = {'key': json.loads(json.dumps(key, default=str)), 'arrays': {}}
      for k, a in out.items():
        a.flush()
        del a
        meta['arrays'][k] = {'shape': list(shapes[k]), 'sha256': _file_sha256(tmp / f'{k}.npy')}
      atomic.write_text(tmp / 'meta.json', json.dumps(meta))
