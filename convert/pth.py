"""Reading torch-saved files (`.pth`, `.pt`, transformers' `pytorch_model.bin`) safely.

`load_state_dict` never runs code from the file: `torch.load(weights_only=True)` when
torch is installed, otherwise a restricted unpickler over torch's zip layout
(`data.pkl` plus one `data/<key>` member per storage) that resolves only the
globals a plain tensor needs. Anything else in the pickle is refused by name.
"""
import collections
import io
import pickle
import re
import typing
import zipfile

import numpy as np

from convert.common import CheckpointError

WRAPPER_PREFIXES = ('module.', 'backbone.')  # DDP's wrapper and the SSL meta-architecture's backbone


class _Refused(Exception):
  """A pickle global outside the allow-list; carries its dotted name."""


class _StorageType(typing.NamedTuple):
  # A tuple, so a pickle's BUILD opcode cannot rewrite it.
  name: str


# torch storage class -> (numpy element type, whether it is bfloat16, which numpy lacks)
STORAGES = {'FloatStorage': ('f4', False), 'DoubleStorage': ('f8', False), 'HalfStorage': ('f2', False),
            'BFloat16Storage': ('u2', True), 'LongStorage': ('i8', False), 'IntStorage': ('i4', False),
            'ShortStorage': ('i2', False), 'CharStorage': ('i1', False), 'ByteStorage': ('u1', False),
            'BoolStorage': ('?', False)}


def _refusal(path, name: str) -> CheckpointError:
  return CheckpointError(f'{path}: refusing to unpickle global {name}: a checkpoint may hold only tensors and '
                         'plain containers, and loading anything else could run code')


def _ints(values, what: str) -> tuple:
  values = tuple(values)
  if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
    raise ValueError(f'tensor {what} {values!r} is not a tuple of non-negative ints')
  return values


def _rebuild_tensor(storage, offset, size, stride, *_):
  """torch._utils._rebuild_tensor_v2 over a numpy storage; bounds are checked before any strided view."""
  if not isinstance(storage, np.ndarray):
    raise ValueError('a tensor whose storage is not a checkpoint storage')
  (offset,), size, stride = _ints([offset], 'offset'), _ints(size, 'size'), _ints(stride, 'stride')
  if len(size) != len(stride):
    raise ValueError(f'tensor size {size} and stride {stride} differ in length')
  if 0 in size:
    return np.zeros(size, storage.dtype)
  if offset + sum((n - 1) * s for n, s in zip(size, stride)) >= len(storage):
    raise ValueError(f'tensor (offset {offset}, size {size}, stride {stride}) overruns its storage of {len(storage)}')
  strides = [s * storage.itemsize for s in stride]
  return np.array(np.lib.stride_tricks.as_strided(storage[offset:], size, strides))


def _rebuild_parameter(data, *_):
  if not isinstance(data, np.ndarray):
    raise ValueError('a parameter that does not wrap a tensor')
  return data


ALLOWED = {('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
           ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
           ('collections', 'OrderedDict'): collections.OrderedDict}


class _Unpickler(pickle.Unpickler):
  """Unpickles torch's data.pkl, resolving only ALLOWED globals and torch storage classes."""

  def __init__(self, archive: zipfile.ZipFile, prefix: str, byteorder: str):
    super().__init__(io.BytesIO(archive.read(prefix + 'data.pkl')))
    self.archive, self.prefix = archive, prefix
    self.order = '>' if byteorder == 'big' else '<'
    self.storages = {}

  def find_class(self, module, name):
    if (module, name) in ALLOWED:
      return ALLOWED[module, name]
    if module == 'torch' and name in STORAGES:
      return _StorageType(name)
    raise _Refused(f'{module}.{name}')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage' and isinstance(pid[1], _StorageType)):
      raise ValueError(f'unexpected persistent id {str(pid)[:80]}')
    _, kind, key, _, numel = pid
    if key not in self.storages:
      code, bf16 = STORAGES[kind.name]
      raw = self.archive.read(f'{self.prefix}data/{key}')
      dtype = np.dtype(code).newbyteorder(self.order)
      if not isinstance(numel, int) or len(raw) != numel * dtype.itemsize:
        raise ValueError(f'storage {key!r} holds {len(raw)} bytes, not {numel} x {dtype.itemsize}')
      array = np.frombuffer(raw, dtype)
      # Widen 16-bit floats here, per storage, so the strides in elements still apply.
      if bf16:
        array = (array.astype(np.uint32) << 16).view(np.float32)
      elif code == 'f2':
        array = array.astype(np.float32)
      self.storages[key] = array
    return self.storages[key]


def unpickle_without_torch(path):
  """A torch zip-format file -> its object, with tensors as numpy arrays; no torch needed, no code run."""
  if not zipfile.is_zipfile(path):
    raise CheckpointError(f'{path}: not a zip-format torch checkpoint (truncated or corrupt, or the legacy '
                          'pre-1.6 format, which needs torch to read)')
  try:
    with zipfile.ZipFile(path) as archive:
      names = archive.namelist()
      pickles = [n for n in names if n == 'data.pkl' or n.endswith('/data.pkl')]
      if len(pickles) != 1:
        raise CheckpointError(f'{path}: expected one data.pkl in the archive, found {len(pickles)}')
      prefix = pickles[0][:-len('data.pkl')]
      byteorder = archive.read(prefix + 'byteorder').decode() if prefix + 'byteorder' in names else 'little'
      return _Unpickler(archive, prefix, byteorder).load()
  except _Refused as e:
    raise _refusal(path, str(e)) from None
  except CheckpointError:
    raise
  except Exception as e:  # a damaged member, a bad CRC, a malformed pickle
    raise CheckpointError(f'{path}: not a readable torch checkpoint ({type(e).__name__}: {e})') from e


def _torch_load(path):
  import torch
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    found = re.search(r'GLOBAL ([\w.]+)', str(e))
    if found:
      raise _refusal(path, found.group(1)) from None
    raise CheckpointError(f'{path}: not a readable torch checkpoint ({e})') from e
  except Exception as e:
    first_line = (str(e).strip().splitlines() or [''])[0]
    raise CheckpointError(f'{path}: not a readable torch checkpoint ({type(e).__name__}: {first_line})') from e

  def to_numpy(x):
    if isinstance(x, torch.Tensor):
      x = x.detach().cpu()
      return (x.float() if x.dtype in (torch.bfloat16, torch.float16) else x).numpy()
    if isinstance(x, dict):
      return {k: to_numpy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return type(x)(to_numpy(v) for v in x)
    return x
  try:
    return to_numpy(obj)
  except (TypeError, RuntimeError) as e:  # a tensor numpy cannot hold (complex, quantized, sparse)
    raise CheckpointError(f'{path}: a tensor that cannot be read as a numpy array ({e})') from e


def _is_state_dict(x) -> bool:
  return isinstance(x, dict) and bool(x) and all(isinstance(v, np.ndarray) for v in x.values())


def _unwrap(obj, path) -> dict:
  """The state dict itself, or the one value of a wrapper ({'model': sd}, {'teacher': sd}, ...) that is one."""
  if not isinstance(obj, dict):
    raise CheckpointError(f'{path}: holds a {type(obj).__name__}, not a state dict of tensors')
  if _is_state_dict(obj):
    return obj
  found = [k for k, v in obj.items() if _is_state_dict(v)]
  if len(found) != 1:
    why = f'keys {found} each hold one' if found else 'none of its values is one'
    raise CheckpointError(f'{path}: expected a state dict of tensors or a wrapper around exactly one; {why} '
                          f'(top-level keys {list(obj)[:8]})')
  return obj[found[0]]


def _strip_prefixes(sd: dict, path) -> dict:
  if not all(isinstance(k, str) for k in sd):
    raise CheckpointError(f'{path}: state dict keys must be strings')
  while prefix := next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in sd)), None):
    sd = {k[len(prefix):]: v for k, v in sd.items()}
  return sd


def load_state_dict(path) -> dict[str, np.ndarray]:
  """A torch-saved file -> flat name -> numpy array (16-bit floats widened to float32), never running code.

  A wrapper dict around exactly one state dict is unwrapped, and a 'module.' or
  'backbone.' prefix shared by every key is stripped.
  """
  try:
    import torch  # noqa: F401  (only whether it is there)
  except ImportError:
    obj = unpickle_without_torch(path)
  else:
    obj = _torch_load(path)
  return _strip_prefixes(_unwrap(obj, path), path)
