"""big_vision `.npz` checkpoints (SigLIP, SigLIP2) -> stitchjax ViT.

A big_vision `.npz` is a flat archive of a flax parameter tree, its names joined
with '/'. Three layouts are read, following big_vision's own `utils.load_params`:

- a two-tower (SigLIP/SigLIP2) checkpoint as released: `params/img/...` for the
  image tower, `params/txt/...`, `params/t` and `params/b` for the text tower and
  the sigmoid loss's temperature and bias, which a vision backbone does not use;
- the same without the leading `params/` (how some re-uploads store it);
- a vision-only tree, `flax.traverse_util.flatten_dict(params['img'], sep='/')`,
  with or without a leading `params/`: it has no `img/` level.

Inside the image tower (`big_vision/models/vit.py`, posemb='learn', pool_type
'map' or 'none') the encoder blocks are either `Transformer/encoderblock_{i}/...`
or, for models trained with scan=True, one `Transformer/encoderblock/...` whose
leaves carry a leading depth axis. Attention kernels keep flax's per-head axes:
query/key/value (D, heads, head_dim), out (heads, head_dim, D).

An image-side `head/{kernel,bias}` is ignored as well: it is the Dense after
pooling (the projection into a joint text space, or a classifier), which
transformers' `pooler_output` and stitchjax's `pool` stop before. SigLIP's
image tower has none (big_vision builds it with out_dim=(None, D)).

Everything is read with allow_pickle=False and lazily, so the text tower is
never decompressed; an archive member that would need pickle is refused.
"""
import collections.abc
import re
import zipfile

import ml_dtypes
import numpy as np

from convert import common
from convert.common import CheckpointError
from stitchjax.vit import ViTConfig

METHOD = 'zoom'  # big_vision's vit.resample_posemb: scipy.ndimage.zoom(order=1) on the (g, g, D) grid
SCAN, LOOP = 'encoderblock', 'encoderblock_{}'

# (big_vision name, stitchjax name, reshape) for the modules a block and the MAP head share.
LAYER_NORM = [('scale', 'scale', None), ('bias', 'bias', None)]
MLP = [('Dense_0/kernel', 'fc1/kernel', None), ('Dense_0/bias', 'fc1/bias', None),
       ('Dense_1/kernel', 'fc2/kernel', None), ('Dense_1/bias', 'fc2/bias', None)]


def _attention(cfg):
  """flax MultiHeadDotProductAttention keeps the heads as separate axes; stitchjax's Dense merges them."""
  d, h, hd = cfg.dim, cfg.heads, cfg.head_dim
  into_heads = [(f'{name}/kernel', f'{ours}/kernel', _reshape((d, h, hd), (d, d))) for name, ours in
                (('query', 'q'), ('key', 'k'), ('value', 'v'))]
  into_heads += [(f'{name}/bias', f'{ours}/bias', _reshape((h, hd), (d,))) for name, ours in
                 (('query', 'q'), ('key', 'k'), ('value', 'v'))]
  return into_heads + [('out/kernel', 'o/kernel', _reshape((h, hd, d), (d, d))), ('out/bias', 'o/bias', None)]


def _reshape(have, want):
  """Merges head axes, on the trailing axes only, so a scan layout's leading depth axis passes through."""
  def fn(a):
    if a.shape[a.ndim - len(have):] != have:
      raise ValueError(f'expected trailing axes {have}')
    return a.reshape(*a.shape[:a.ndim - len(have)], *want)
  return fn


def _block_params(cfg):
  """Every parameter of one encoder block: (big_vision path, stitchjax path, reshape)."""
  table = [(f'LayerNorm_0/{s}', f'norm1/{o}', f) for s, o, f in LAYER_NORM]
  table += [(f'LayerNorm_1/{s}', f'norm2/{o}', f) for s, o, f in LAYER_NORM]
  table += [(f'MultiHeadDotProductAttention_0/{s}', f'attn/{o}', f) for s, o, f in _attention(cfg)]
  return table + [(f'MlpBlock_0/{s}', f'mlp/{o}', f) for s, o, f in MLP]


def _head_params(cfg):
  table = [('probe', 'probe', _reshape((1, 1, cfg.dim), (1, cfg.dim)))]
  table += [(f'LayerNorm_0/{s}', f'norm/{o}', f) for s, o, f in LAYER_NORM]
  table += [(f'MultiHeadDotProductAttention_0/{s}', f'attn/{o}', f) for s, o, f in _attention(cfg)]
  return table + [(f'MlpBlock_0/{s}', f'mlp/{o}', f) for s, o, f in MLP]


class Archive(collections.abc.Mapping):
  """An open npz as a lazy name -> array map; members are decompressed only when read."""

  def __init__(self, npz: np.lib.npyio.NpzFile, path):
    self.npz = npz
    self.shapes = {}
    members = set(npz.zip.namelist())
    for name in npz.files:
      shape, dtype = _header(npz.zip, name + '.npy' if name + '.npy' in members else name, name, path)
      if dtype.hasobject:
        raise CheckpointError(f'{path}: {name!r} is an object array, which needs pickle; refusing to unpickle')
      self.shapes[name] = shape

  def __getitem__(self, name):
    a = self.npz[name]
    if a.dtype.kind == 'V' and a.itemsize == 2:  # np.save writes bfloat16 as raw 2-byte void, as big_vision notes
      a = a.view(ml_dtypes.bfloat16)
    return a

  def __contains__(self, name):  # Mapping's default would read the member to find out
    return name in self.shapes

  def __iter__(self):
    return iter(self.shapes)

  def __len__(self):
    return len(self.shapes)


def _header(archive: zipfile.ZipFile, member: str, name: str, path):
  """(shape, dtype) from a member's .npy header, without reading its data."""
  try:
    with archive.open(member) as f:
      version = np.lib.format.read_magic(f)
      read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
      shape, _, dtype = read(f)
  except Exception as e:  # not an .npy member, a damaged header, or a small member's failed CRC check
    raise CheckpointError(f'{path}: cannot read key {name!r} ({e})') from e
  return tuple(shape), dtype


def _open(path):
  try:
    npz = np.load(path, allow_pickle=False)
  except Exception as e:
    # A truncated zip fails here; so does any non-zip file, at numpy's pickle fallback, which allow_pickle refuses.
    raise CheckpointError(f'{path}: not a readable .npz archive ({e})') from e
  if not isinstance(npz, np.lib.npyio.NpzFile):
    raise CheckpointError(f'{path}: a single array (np.save), not an .npz archive of named arrays')
  return npz


def _prefixes(names) -> tuple[str, str]:
  """(root, image tower) prefixes; big_vision strips 'params/', then takes 'img/' when there is one."""
  root = 'params/' if any(k.startswith('params/') for k in names) else ''
  tower = root + 'img/' if any(k.startswith(root + 'img/') for k in names) else root
  return root, tower


def _shape(r: common.Reader, shapes: dict, key: str, ndim: int) -> tuple:
  if key not in shapes:
    raise r.error(f'missing key {key!r}')
  if len(shapes[key]) != ndim:
    raise r.error(f'key {key!r} has shape {shapes[key]}, expected {ndim} axes')
  return shapes[key]


def _layout(r: common.Reader, shapes: dict, t: str) -> tuple[str, int]:
  """('scan' or 'loop', depth): scan=True stacks the blocks; otherwise they are numbered from 0."""
  stacked = any(k.startswith(f'{t}{SCAN}/') for k in shapes)
  numbered = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(t) + r'encoderblock_(\d+)/', k))}
  if stacked and numbered:
    raise r.error(f'both {t}{SCAN}/ (scan) and {t}encoderblock_N/ blocks; refusing to guess which to load')
  if stacked:
    return 'scan', _shape(r, shapes, f'{t}{SCAN}/LayerNorm_0/scale', 2)[0]
  if not numbered:
    raise r.error(f'no encoder blocks under {t!r}')
  return 'loop', max(numbered) + 1  # a gap in the numbering surfaces as a missing key


def vit_fields(r: common.Reader, shapes: dict, tower: str) -> tuple[dict, str]:
  """ViTConfig fields read off the tensor shapes, and the block layout."""
  t = tower + 'Transformer/'
  if tower + 'pos_embedding' not in shapes:
    raise r.error(f'no {tower}pos_embedding; only learned position embeddings (posemb="learn") are supported')
  if tower + 'cls' in shapes:
    raise r.error(f'{tower}cls: a class token (pool_type="tok") is not a SigLIP layout; refusing to load it')
  p, p2, channels, dim = _shape(r, shapes, tower + 'embedding/kernel', 4)
  if p != p2 or channels != 3:
    raise r.error(f'{tower}embedding/kernel has shape {(p, p2, channels, dim)}; expected (p, p, 3, D)')
  _, num_pos, _ = _shape(r, shapes, tower + 'pos_embedding', 3)
  grid = int(round(num_pos**0.5))
  if grid * grid != num_pos:
    raise r.error(f'{tower}pos_embedding has {num_pos} positions, not a square grid')
  layout, depth = _layout(r, shapes, t)
  block = t + (SCAN if layout == 'scan' else LOOP.format(0)) + '/'
  axes = 4 if layout == 'scan' else 3
  heads = _shape(r, shapes, block + 'MultiHeadDotProductAttention_0/query/kernel', axes)[-2]
  mlp_dim = _shape(r, shapes, block + 'MlpBlock_0/Dense_0/kernel', axes - 1)[-1]
  pool = 'map' if any(k.startswith(tower + 'MAPHead_0/') for k in shapes) else 'none'
  # flax's nn.gelu is the tanh approximation and its LayerNorm epsilon is 1e-6.
  fields = dict(family='siglip', depth=depth, dim=dim, heads=heads, mlp_dim=mlp_dim, patch_size=p,
                image_size=grid * p, cls_token=False, act='gelu_tanh', norm_eps=1e-6, pool=pool)
  return fields, layout


def _stacked(r: common.Reader, key: str, fn, depth: int, ours: str) -> np.ndarray:
  value = r.get(key)
  try:
    value = value if fn is None else fn(value)
  except ValueError as e:
    raise r.error(f'key {key!r} has shape {value.shape}, which does not fit {ours}: {e}') from e
  if value.ndim == 0 or len(value) != depth:
    raise r.error(f'key {key!r} has shape {value.shape}; expected a leading axis of {depth} blocks')
  return value


def _blocks(r: common.Reader, cfg, t: str, layout: str):
  for name, ours, fn in _block_params(cfg):
    if layout == 'loop':
      for i in range(cfg.depth):
        r.put(f'blocks/{i}/{ours}', f'{t}{LOOP.format(i)}/{name}', fn)
    else:
      key = f'{t}{SCAN}/{name}'
      for i, value in enumerate(_stacked(r, key, fn, cfg.depth, f'blocks/*/{ours}')):
        r.set(f'blocks/{i}/{ours}', value, key)


def _convert(r: common.Reader, cfg, tower: str, layout: str):
  r.put('embed/patch/kernel', tower + 'embedding/kernel')  # flax Conv (p, p, 3, D), as stitchjax's
  r.put('embed/patch/bias', tower + 'embedding/bias')
  r.put('embed/pos', tower + 'pos_embedding', _reshape((1, cfg.num_patches, cfg.dim), (cfg.num_patches, cfg.dim)))
  _blocks(r, cfg, tower + 'Transformer/', layout)
  for name, ours, fn in LAYER_NORM:
    r.put(f'norm/{ours}', f'{tower}Transformer/encoder_norm/{name}', fn)
  if cfg.pool == 'map':
    for name, ours, fn in _head_params(cfg):
      r.put(f'head/{ours}', f'{tower}MAPHead_0/{name}', fn)


def _ignored(root: str, tower: str) -> tuple[str, ...]:
  """Regexes for what a vision backbone leaves out: the post-pooling Dense, and for two towers the text side."""
  ignore = (rf'^{re.escape(tower)}head/(kernel|bias)$',)
  if tower != root:
    ignore += (rf'^{re.escape(root)}txt/', rf'^{re.escape(root)}[tb]$')
  return ignore


def fields(path) -> dict:
  """ViTConfig fields at native resolution from the archive's array headers alone (no weights read)."""
  with _open(path) as npz:
    archive = Archive(npz, path)
    return vit_fields(common.Reader(path, archive), archive.shapes, _prefixes(archive.shapes)[1])[0]


def load(path) -> tuple[dict, str, dict, None]:
  """-> (ViTConfig fields at native resolution, 'zoom', params, None: a .npz carries no preprocessor config)."""
  npz = _open(path)
  with npz:
    archive = Archive(npz, path)
    reader = common.Reader(path, archive)
    root, tower = _prefixes(archive.shapes)
    fields, layout = vit_fields(reader, archive.shapes, tower)
    try:
      cfg = ViTConfig(**fields)
    except ValueError as e:
      raise reader.error(f'shapes give an impossible config: {e}') from e
    _convert(reader, cfg, tower, layout)
    reader.check_all_used(_ignored(root, tower))
    params = common.assemble(cfg, reader)
  return cfg.to_dict(), METHOD, params, None
