"""Reading torch-saved files safely (convert/pth.py): with torch, and with the restricted unpickler."""
import argparse
import os
import sys

import numpy as np
import pytest
import torch

import helpers as H
from convert import CheckpointError, pth


def save(path, sd):
  torch.save(sd, path)
  return path


def load_without_torch(path):
  """load_state_dict as it runs where `import torch` fails (only around the call: torch imports lazily)."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(sys.modules, 'torch', None)
    return pth.load_state_dict(path)


@pytest.fixture(params=['torch', 'no_torch'])
def reader(request):
  return pth.load_state_dict if request.param == 'torch' else load_without_torch


def test_both_readers_agree_on_every_tensor_kind(tmp_path):
  g = torch.Generator().manual_seed(0)
  base = torch.randn(6, 10, generator=g)
  sd = {'f32': base, 'bf16': base.bfloat16(), 'f16': base.half(), 'f64': base.double(),
        'transposed': base.T, 'offset_view': base[2:5, 3:7], 'shares_storage': base[1],
        'param': torch.nn.Parameter(base.clone()), 'ints': torch.arange(5), 'mask': torch.tensor([True, False]),
        'scalar': torch.tensor(3.5), 'empty': torch.zeros(0, 4)}
  path = save(tmp_path / 'kinds.pth', sd)
  with_torch, without = pth.load_state_dict(path), load_without_torch(path)
  assert with_torch.keys() == without.keys() == sd.keys()
  for k, t in sd.items():
    want = t.detach().float().numpy() if t.dtype in (torch.bfloat16, torch.float16) else t.detach().numpy()
    for got in (with_torch[k], without[k]):
      assert got.dtype == want.dtype and got.shape == want.shape, k
      np.testing.assert_array_equal(got, want)
  # A module's own state_dict() (an OrderedDict carrying _metadata) reads the same both ways.
  model = H.perturbed(H.CASES['dinov2_registers']())
  path = save(tmp_path / 'hf.pth', model.state_dict())
  for k, v in load_without_torch(path).items():
    np.testing.assert_array_equal(v, model.state_dict()[k].numpy())


class _Evil:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


def test_code_in_the_pickle_is_refused_by_name(reader, tmp_path):
  marker = tmp_path / 'pwned'
  path = save(tmp_path / 'evil.pth', {'cls_token': torch.zeros(3), 'payload': _Evil(marker)})
  name = f'{os.system.__module__}.system'  # posix.system
  with pytest.raises(CheckpointError, match=rf'evil.pth: refusing to unpickle global {name}'):
    reader(path)
  assert not marker.exists()
  # Not only code: any global outside tensors and plain containers, e.g. a training run's saved arguments.
  path = save(tmp_path / 'args.pth', {'model': {'cls_token': torch.zeros(3)}, 'args': argparse.Namespace(lr=1)})
  with pytest.raises(CheckpointError, match='args.pth: refusing to unpickle global argparse.Namespace'):
    reader(path)


def test_truncated_and_corrupt_files_are_named(reader, tmp_path):
  path = save(tmp_path / 'model.pth', H.perturbed(H.CASES['dinov2']()).state_dict())
  for _ in H.truncated_then_zeroed(path):
    with pytest.raises(CheckpointError, match='model.pth: not a .*torch checkpoint'):
      reader(path)


def test_storage_damage_is_caught_without_torch(tmp_path):
  """The zip's CRC check catches zeroed bytes in a storage."""
  big = torch.arange(4096, dtype=torch.float32)
  path = save(tmp_path / 'model.pth', {'big': big})
  data = path.read_bytes()
  start = data.index(big.numpy().tobytes()[-64:])
  path.write_bytes(data[:start] + bytes(64) + data[start + 64:])
  with pytest.raises(CheckpointError, match='model.pth: not a readable torch checkpoint'):
    load_without_torch(path)
