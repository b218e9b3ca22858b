"""Feature cache: frozen-backbone tokens computed once, stored memory-mapped in bfloat16 (paper A.2.2).

The source prefix output at layer n, the target's layer-n and final tokens, and
pooled features depend only on (checkpoint, layer, split, preprocessing). One
pass of a backbone over a split writes every requested layer at once:

    entry = cache.tokens(bb, 'dinov2', split, 'train', layers=(2, 6), final=True, pooled=True)
    entry['layer_2']   # np.memmap (N, T, D) bfloat16, read batch by batch
    entry['final']     # (N, T, D): the final-normed tokens
    entry['pooled']    # (N, D)

Entries are keyed by a content hash of everything they depend on. A paper-scale entry
takes hours to build (ViT-L over fMoW), so it is built in chunks of examples that each
commit on their own: a chunk's rows are written into the entry's arrays, read back and
checked against their crc32, and only then recorded as done. A killed build resumes
at the first chunk not recorded. When every chunk is done, the entry is renamed into
place with a meta.json that holds, per chunk, the crc32 of a sample of its bytes (its
first and last 64 KiB). Opening an entry checks file sizes and those samples, which
catches truncation and torn writes without re-reading a 17 GB entry; a corrupt entry is
rebuilt, never used.

With several processes (stitchjax/distributed.py), each computes its share of the
chunks and every process receives all of them, so no example is computed twice and
every host ends with the whole entry. On storage that all processes share, process 0
alone writes it; on host-local disks (`cache_dir`), every host writes its own copy.
`lfm` then needs no backbone forward at all; `ffm`/`tlt` run only the stitch, the
target suffix and the head.
"""
import contextlib
import fcntl
import functools
import hashlib
import json
import math
import pathlib
import shutil
import warnings
import zlib

import jax
import ml_dtypes
import numpy as np

from stitchjax import atomic, distributed, vit
from stitchjax import data as data_lib

BF16 = ml_dtypes.bfloat16
CHUNK_BYTES = 256 << 20  # all arrays of one chunk together: a killed build loses at most this much work
SAMPLE = 1 << 15  # uint16 values (64 KiB) at each end of a chunk whose crc32 is checked on open


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


def _crc(values: np.ndarray) -> int:
  return zlib.crc32(np.ascontiguousarray(values).view(np.uint8))


def _sample_crc(rows: np.ndarray) -> int:
  flat = rows.reshape(-1)
  return _crc(np.concatenate([flat[:SAMPLE], flat[-SAMPLE:]]))


class Cache:
  """A directory of feature entries, one subdirectory per content hash."""

  def __init__(self, root, chunk_bytes: int = CHUNK_BYTES):
    self.root = pathlib.Path(root)
    self.root.mkdir(parents=True, exist_ok=True)
    self.chunk_bytes = chunk_bytes
    self._backbone_digests = {}
    # On storage process 0 also writes to, another process only reads (every process takes part in the check).
    shared = distributed.shares_main_directory(self.root)
    self.writer = distributed.is_main() or not shared

  def backbone_digest(self, bb) -> str:
    """params_digest of a backbone, computed once per Backbone object."""
    if id(bb) not in self._backbone_digests:
      self._backbone_digests[id(bb)] = params_digest(bb.params)
    return self._backbone_digests[id(bb)]

  def tokens(self, bb, bb_name: str, split, split_name: str, *, layers=(), final=False, pooled=False,
             batch_size: int = 64) -> dict:
    """Token features of `bb` on `split`: 'layer_<n>' (N,T,D), 'final' (N,T,D), 'pooled' (N,D); bfloat16."""
    layers = tuple(sorted(set(int(n) for n in layers)))
    key = {'backbone': self.backbone_digest(bb), 'config': bb.config.key() | {'dtype': None},
           'dtype': bb.config.dtype, 'preprocess': bb.preprocessing.to_dict(), 'split': split.fingerprint,
           'layers': layers, 'final': final, 'pooled': pooled}
    entry = self.root / digest(key)
    arrays = self._open(entry, key)
    if distributed.any_process(arrays is None):
      _Build(self, entry, key, bb, split, f'{bb_name}/{split_name}', batch_size).run(done=arrays is not None)
      distributed.barrier(f'features {entry.name}')
      arrays = self._open(entry, key)
    return arrays

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
        a = np.load(path, mmap_mode='r')
        if 'chunks' not in info:
          raise ValueError('written by an older stitchjax (whole-file sha256); it is rebuilt in chunks')
        if list(a.shape) != info['shape'] or a.dtype != np.uint16:
          raise ValueError(f'{path.name} has shape {a.shape} {a.dtype}, expected {info["shape"]} uint16')
        if any(_sample_crc(a[start:stop]) != crc for start, stop, crc in info['chunks']):
          raise ValueError(f'{path.name} does not match its checksum')
        arrays[name] = a.view(BF16)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
      warnings.warn(f'feature cache entry {entry} is corrupt ({e}); rebuilding it')
      if self.writer:
        shutil.rmtree(entry, ignore_errors=True)
      return None
    return arrays


class _Build:
  """One entry's resumable build: chunks of `rows` examples, spread over processes."""

  def __init__(self, cache: Cache, entry, key, bb, split, desc: str, batch_size: int):
    self.cache, self.entry, self.key, self.bb, self.split, self.desc = cache, entry, key, bb, split, desc
    self.batch_size = batch_size
    cfg = bb.config
    n = len(split)
    self.shapes = {f'layer_{l}': (n, cfg.num_tokens, cfg.dim) for l in key['layers']}
    if key['final']:
      self.shapes['final'] = (n, cfg.num_tokens, cfg.dim)
    if key['pooled']:
      self.shapes['pooled'] = (n, cfg.dim)
    per_example = sum(2 * math.prod(s[1:]) for s in self.shapes.values())
    self.rows = max(1, cache.chunk_bytes // per_example // batch_size) * batch_size
    self.chunks = [(i, min(i + self.rows, n)) for i in range(0, n, self.rows)]
    self.partial = entry.with_name(f'.{entry.name}.partial')

  def run(self, done: bool) -> None:
    """Computes the chunks some process lacks; `done`: this process already has the entry."""
    with self._writing(active=self.cache.writer and not done) as out:
      have = np.array([out is None or (self.partial / 'chunks' / f'{i}.json').exists() for i in range(len(self.chunks))])
      todo = np.flatnonzero(~distributed.gather(have).all(0)).tolist()
      count, me = jax.process_count(), jax.process_index()
      bar = distributed.progress(total=sum(self.chunks[i][1] - self.chunks[i][0] for i in todo), unit='image',
                                 desc=f'features {self.desc}', leave=False)
      for r in range(0, len(todo), count):
        mine = todo[r + me] if r + me < len(todo) else None
        gathered = {k: distributed.gather(v) for k, v in self._compute(mine).items()}
        for p, i in enumerate(todo[r:r + count]):
          if out is not None and not have[i]:
            self._commit(out, i, {k: v[p] for k, v in gathered.items()})
          bar.update(self.chunks[i][1] - self.chunks[i][0])
      bar.close()
      if out is not None:
        self._finish(out)

  @contextlib.contextmanager
  def _writing(self, active: bool):
    """The partial entry's arrays, opened for writing under a lock (None: this process writes nothing)."""
    if not active:
      yield None
      return
    self.partial.mkdir(parents=True, exist_ok=True)
    with open(self.partial / '.lock', 'a') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)  # another run sharing this cache_dir may be building the same entry
      if (self.entry / 'meta.json').exists():  # it finished while we waited; _open checks it
        shutil.rmtree(self.partial, ignore_errors=True)
        yield None
        return
      try:
        with atomic.disk_full_is_clear(f'the feature cache entry {self.entry}'):
          yield self._arrays()
      except atomic.DiskFull:
        if not any((self.partial / 'chunks').glob('*.json')):  # nothing worth resuming from
          shutil.rmtree(self.partial, ignore_errors=True)
        raise

  def _arrays(self) -> dict:
    """The partial entry's memmaps: resumed where its plan matches, else created afresh."""
    plan = {'key': json.loads(json.dumps(self.key, default=str)), 'rows': self.rows}
    if _read_json(self.partial / 'plan.json') == plan:
      return {k: np.load(self.partial / f'{k}.npy', mmap_mode='r+') for k in self.shapes}
    shutil.rmtree(self.partial / 'chunks', ignore_errors=True)
    out = {k: np.lib.format.open_memmap(self.partial / f'{k}.npy', mode='w+', dtype=np.uint16, shape=s)
           for k, s in self.shapes.items()}
    (self.partial / 'chunks').mkdir()
    atomic.write_text(self.partial / 'plan.json', json.dumps(plan))
    return out

  def _compute(self, i: int | None) -> dict:
    """Chunk i's features as uint16 (bf16 bits), padded to `rows` examples; None: zeros (no chunk left)."""
    out = {k: np.zeros((self.rows, *s[1:]), np.uint16) for k, s in self.shapes.items()}
    if i is None:
      return out
    bb, start, stop = self.bb, *self.chunks[i]
    # On the host: slicing and casting a device array would compile once per batch size.
    for images, _, idx in data_lib.batches(self.split.subset(np.arange(start, stop)), bb.preprocess,
                                           self.batch_size, seed=None):
      valid = len(idx)
      tokens = forward(bb, bb.params, pad(images, self.batch_size), self.key['layers'], self.key['final'],
                       self.key['pooled'])
      for name, x in tokens.items():
        out[name][idx] = np.asarray(x)[:valid].astype(BF16).view(np.uint16)
    return out

  def _commit(self, out: dict, i: int, values: dict) -> None:
    """Writes chunk i, reads it back against its crc32, then records it as done."""
    start, stop = self.chunks[i]
    record = {}
    for k, v in values.items():
      rows = v[:stop - start]
      out[k][start:stop] = rows
      out[k].flush()
      written = np.load(self.partial / f'{k}.npy', mmap_mode='r')[start:stop]
      if _crc(written) != _crc(rows):
        raise OSError(f'{self.partial / k}.npy: rows {start}:{stop} read back differently from what was written')
      record[k] = _sample_crc(rows)
    atomic.write_text(self.partial / 'chunks' / f'{i}.json', json.dumps(record))

  def _finish(self, out: dict) -> None:
    records = [json.loads((self.partial / 'chunks' / f'{i}.json').read_text()) for i in range(len(self.chunks))]
    meta = {'key': json.loads(json.dumps(self.key, default=str)),
            'arrays': {k: {'shape': list(s), 'chunks': [[start, stop, r[k]] for (start, stop), r in
                                                        zip(self.chunks, records)]}
                       for k, s in self.shapes.items()}}
    out.clear()  # closes the memmaps before the rename
    for name in ('plan.json', '.lock'):
      (self.partial / name).unlink()
    shutil.rmtree(self.partial / 'chunks')
    atomic.write_text(self.partial / 'meta.json', json.dumps(meta))
    if self.entry.exists():
      shutil.rmtree(self.entry)
    self.partial.rename(self.entry)


def pad(rows: np.ndarray, size: int) -> np.ndarray:
  """The last batch padded with zeros to `size` rows: one compiled shape per span, not two."""
  return rows if len(rows) == size else np.concatenate([rows, np.zeros((size - len(rows), *rows.shape[1:]), rows.dtype)])


def forward(bb, params, images, layers=(), final: bool = False, pooled: bool = False) -> dict:
  """One pass of a backbone over preprocessed images: {'layer_<n>': tokens after block n for each of
  `layers`, and as asked 'final' (the final tokens) and 'pooled' (B, D)}. One compiled program per
  backbone and set of outputs."""
  return _forward(bb.config, params, images, tuple(sorted(layers)), final, pooled)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _forward(cfg, params, images, layers: tuple, final: bool, pooled: bool) -> dict:
  out = {}
  x, at = vit.embed(cfg, params, images), 0
  for layer in layers:
    x, at = vit.blocks(cfg, params, x, at, layer), layer
    out[f'layer_{layer}'] = x
  if final or pooled:
    tokens = vit.final(cfg, params, vit.blocks(cfg, params, x, at, cfg.depth))
    if final:
      out['final'] = tokens
    if pooled:
      out['pooled'] = vit.pool(cfg, params, tokens)
  return out


def _read_json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError):
    return None
