"""The transformers converter and the `python -m convert` round trip, including every bad input."""
import contextlib
import io
import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy

import helpers as H
from convert import CheckpointError
from convert.__main__ import main as convert_main
from stitchjax import load_backbone

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _convert(*args) -> tuple[int, str]:
  """The CLI's main in this process: (exit status, stderr). One test below runs it as `python -m convert`."""
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    return convert_main(list(map(str, args))), err.getvalue()


@pytest.mark.parametrize('name', sorted(H.CASES))
def test_cli_round_trip_reproduces_the_direct_load(name, tmp_path):
  src, out = tmp_path / 'hf', tmp_path / 'export'
  model = H.build(name, src)
  native = load_backbone(src).config
  size = native.image_size + native.patch_size
  status, err = _convert(src, out, '--image-size', size)
  assert status == 0, err
  direct, exported = load_backbone(src, image_size=size), load_backbone(out)
  assert exported.config == direct.config
  assert exported.preprocessing == direct.preprocessing
  jax.tree.map(np.testing.assert_array_equal, exported.params, direct.params)
  x = H.images(2, size)
  ref = H.reference(model, x)
  assert H.rel_err(exported.embed(exported.params, x), ref.hidden_states[0]) <= 1e-5


def test_python_m_convert_writes_refuses_to_overwrite_and_forces(hf_dir, tmp_path):
  def cli(*args):
    return subprocess.run([sys.executable, '-m', 'convert', *map(str, args)], cwd=ROOT, capture_output=True, text=True)
  out = tmp_path / 'export'
  first = cli(hf_dir, out)
  assert first.returncode == 0 and first.stdout.startswith(f'wrote {out}: dinov2'), first.stderr
  assert load_backbone(out).config == load_backbone(hf_dir).config
  refused = cli(hf_dir, out)
  assert refused.returncode == 1 and refused.stderr.startswith('error: ') and 'force' in refused.stderr
  assert cli(hf_dir, out, '--force').returncode == 0


@pytest.fixture
def hf_dir(tmp_path):
  H.build('dinov2', tmp_path / 'src')
  return tmp_path / 'src'


def _edit_weights(directory, fn):
  path = directory / 'model.safetensors'
  arrays = dict(safetensors.numpy.load_file(str(path)))
  fn(arrays)
  safetensors.numpy.save_file(arrays, str(path))


def test_missing_key_is_named(hf_dir):
  _edit_weights(hf_dir, lambda a: a.pop('encoder.layer.1.norm2.bias'))
  with pytest.raises(CheckpointError, match=r"src: missing key 'encoder.layer.1.norm2.bias'"):
    load_backbone(hf_dir)


def test_unexpected_key_is_named(hf_dir):
  _edit_weights(hf_dir, lambda a: a.update({'encoder.layer.0.extra.weight': np.zeros(3, np.float32)}))
  with pytest.raises(CheckpointError, match=r"unexpected keys 'encoder.layer.0.extra.weight'"):
    load_backbone(hf_dir)


def test_wrong_shape_is_named(hf_dir):
  _edit_weights(hf_dir, lambda a: a.update({'encoder.layer.2.norm1.weight': np.ones(31, np.float32)}))
  with pytest.raises(CheckpointError, match=r"'encoder.layer.2.norm1.weight' gives blocks/2/norm1/scale shape \(31,\)"):
    load_backbone(hf_dir)


def test_extra_layer_in_the_weights_is_refused(hf_dir):
  def add_layer(a):
    a.update({k.replace('layer.2.', 'layer.3.'): v for k, v in list(a.items()) if 'layer.2.' in k})
  _edit_weights(hf_dir, add_layer)
  with pytest.raises(CheckpointError, match=r"unexpected keys 'encoder.layer.3"):
    load_backbone(hf_dir)


def test_unknown_architecture_is_named(hf_dir):
  config = json.loads((hf_dir / 'config.json').read_text())
  (hf_dir / 'config.json').write_text(json.dumps(config | {'architectures': ['ViTMAEModel']}))
  with pytest.raises(CheckpointError, match="unsupported architecture \\['ViTMAEModel'\\]"):
    load_backbone(hf_dir)


def test_missing_config_field_is_named(hf_dir):
  config = json.loads((hf_dir / 'config.json').read_text())
  del config['num_attention_heads']
  (hf_dir / 'config.json').write_text(json.dumps(config))
  with pytest.raises(CheckpointError, match="config.json: missing field 'num_attention_heads'"):
    load_backbone(hf_dir)


def test_truncated_and_corrupt_weights_are_named(hf_dir):
  damage = H.truncated_then_zeroed(hf_dir / 'model.safetensors')
  for _, match in zip(damage, ('model.safetensors: not a readable safetensors file', 'model.safetensors')):
    with pytest.raises(CheckpointError, match=match):
      load_backbone(hf_dir)


def test_missing_source_and_weights_are_named(tmp_path, hf_dir):
  with pytest.raises(CheckpointError, match='no such file'):
    load_backbone(tmp_path / 'nowhere')
  (hf_dir / 'model.safetensors').unlink()
  with pytest.raises(CheckpointError, match=r'no \*.safetensors or pytorch_model\*.bin weight file'):
    load_backbone(hf_dir)
  with pytest.raises(CheckpointError, match='unknown checkpoint format'):
    load_backbone(hf_dir / 'config.json')


def test_corrupt_export_is_refused_and_cli_reports_it(hf_dir, tmp_path):
  out = tmp_path / 'export'
  assert _convert(hf_dir, out)[0] == 0
  meta = json.loads((out / 'stitchjax.json').read_text())
  meta['config']['dim'] = 48
  (out / 'stitchjax.json').write_text(json.dumps(meta))
  with pytest.raises(CheckpointError, match=r"key 'blocks/attn/k/bias' has shape \(3, 32\), expected \(3, 48\)"):
    load_backbone(out)
  shutil.rmtree(out / 'params')
  with pytest.raises(CheckpointError, match='params: cannot restore'):
    load_backbone(out)
  status, err = _convert(out, tmp_path / 'again')
  assert status == 1 and 'cannot restore' in err
  assert not (tmp_path / 'again').exists()


def test_dinov3_register_tokens_that_config_json_has_no_place_for_are_refused(tmp_path):
  """No registers: the empty (1, 0, D) parameter transformers writes loads (test_vit checks the model), tokens
  in it do not."""
  H.build('dinov3_noreg', tmp_path)
  assert load_backbone(tmp_path).config.num_prefix_tokens == 1
  _edit_weights(tmp_path, lambda a: a.update({'embeddings.register_tokens': np.ones((1, 2, 32), np.float32)}))
  with pytest.raises(CheckpointError, match=r"key 'embeddings.register_tokens' has shape \(1, 2, 32\), but config.json "
                                            r"has num_register_tokens=0; refusing to load part of the checkpoint"):
    load_backbone(tmp_path)


@pytest.mark.parametrize('name', ['dinov2', 'siglip', 'siglip_nohead', 'dinov3_noreg'])
def test_written_transformers_directory_is_the_reference_state_dict(name, tmp_path):
  """hf.save inverts the converter: a checkpoint read in and written out is transformers' own state dict
  (the masked-image token, unused by the forward, is written as zeros), and transformers loads it."""
  from convert import hf
  model = H.build(name, tmp_path / 'hf')
  bb = load_backbone(tmp_path / 'hf')
  hf.save(tmp_path / 'out', bb.config, bb.params)
  written, reference = (safetensors.numpy.load_file(str(d / 'model.safetensors')) for d in (tmp_path / 'out',
                                                                                             tmp_path / 'hf'))
  reference.pop('embeddings.mask_token', None)
  assert set(written) - {'embeddings.mask_token'} == set(reference)
  for key, value in reference.items():
    np.testing.assert_array_equal(written[key], value, err_msg=key)
  reloaded = type(model).from_pretrained(tmp_path / 'out').eval()
  x = H.images(2, bb.config.image_size)
  assert H.rel_err(bb.blocks(bb.params, bb.embed(bb.params, x), 0, bb.config.depth),
                   H.reference(reloaded, x).hidden_states[-1]) <= 1e-5


def test_writing_an_unsupported_layout_names_it(tmp_path):
  from convert import hf
  H.build('dinov2_registers', tmp_path / 'hf')
  bb = load_backbone(tmp_path / 'hf')
  with pytest.raises(ValueError, match='registers=4'):
    hf.save(tmp_path / 'out', bb.config, bb.params)
  assert not (tmp_path / 'out').exists()
