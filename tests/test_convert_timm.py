"""timm checkpoints: every family matches timm at every layer boundary, at its native and at another
resolution, in float32 (<= 1e-5) and bfloat16 (<= 2e-2); its eval transform bit for bit; refusals by name.

The references are timm 1.0.31's own outputs on tiny random models of each architecture's layout,
written by tests/timm_reference.py into tests/data/timm (timm cannot be imported beside this
project's CPU torch: see that script). Where timm does import, the same checks also run against
timm live on freshly built models.
"""
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

import helpers as H
import timm_reference
from convert import timm as timm_lib
from convert.common import CheckpointError
from stitchjax import load_backbone

DATA = pathlib.Path(__file__).parent / 'data' / 'timm'
CASES = sorted(timm_reference.CASES)


def _tokens(bb, images):
  """Our tokens at the boundaries timm_reference records."""
  out = {'embed': np.asarray(bb.embed(bb.params, images))}
  x = bb.embed(bb.params, images)
  for i in range(bb.config.depth):
    x = bb.blocks(bb.params, x, i, i + 1)
    out[f'block_{i}'] = np.asarray(x)
  out['final'] = np.asarray(bb.final(bb.params, x))
  out['pooled'] = np.asarray(bb.pool(bb.params, out['final']))
  return out


def _check(bb, reference: dict, suffix: str, tolerance: float):
  ours = _tokens(bb, reference['images' + suffix])
  for name, value in ours.items():
    err = H.rel_err(value, reference[name + suffix])
    assert err <= tolerance, f'{name}{suffix}: relative error {err:.2e}'


@pytest.fixture(scope='module', params=CASES)
def case(request):
  return request.param, DATA / request.param / 'model', dict(np.load(DATA / request.param / 'reference.npz'))


def test_every_layer_boundary_matches_timm_at_two_resolutions(case):
  name, path, reference = case
  _, _, size, other = timm_reference.CASES[name]
  bb = load_backbone(path)
  assert bb.config.image_size == size and reference['block_0'].shape[1] == bb.config.num_tokens
  _check(bb, reference, '', 1e-5)
  _check(load_backbone(path, image_size=other), reference, '_other', 1e-5)


def test_bfloat16_is_within_2e_2(case):
  _, path, reference = case
  _check(load_backbone(path, dtype=jnp.bfloat16), reference, '', 2e-2)


def test_preprocessing_is_timms_eval_transform_bit_for_bit(case):
  _, path, reference = case
  bb = load_backbone(path)
  for i in range(len(timm_reference.IMAGE_SHAPES)):
    np.testing.assert_array_equal(bb.preprocess([reference[f'uint8_{i}']])[0], reference[f'transformed_{i}'])


def test_a_bare_state_dict_loads_as_its_named_architecture(monkeypatch):
  directory = DATA / 'dinov2' / 'model'
  weights = directory / 'model.safetensors'
  with pytest.raises(CheckpointError, match='a bare timm state dict; name its architecture'):
    timm_lib.load(weights)
  # The tiny weights are not the registered ViT-L layout of their architecture (24 blocks): named at a key.
  with pytest.raises(CheckpointError, match=r"model.safetensors: missing key 'blocks.3.attn.qkv.weight'"):
    load_backbone(weights, architecture='vit_large_patch14_dinov2')
  # Registered as an architecture of their own, they load as the directory does, with the family's transform.
  monkeypatch.setitem(timm_lib.ARCHITECTURES, 'tiny_dinov2', ('dinov2', 'vit', dict(patch_size=14, embed_dim=32, depth=3,
                                                                              num_heads=4, init_values=1e-5), 42))
  bare, whole = load_backbone(weights, architecture='tiny_dinov2'), load_backbone(directory)
  assert bare.config == whole.config and bare.preprocessing == whole.preprocessing
  jax.tree.map(np.testing.assert_array_equal, bare.params, whole.params)
  with pytest.raises(CheckpointError, match=r"architecture 'vit_large_patch14_dinov2', not 'tiny_dinov2'"):
    load_backbone(directory, architecture='tiny_dinov2')


@pytest.mark.parametrize('name', ['dinov2', 'dinov3', 'clip', 'clip_quickgelu', 'siglip', 'siglip_so400m'])
def test_timm_weights_in_transformers_give_timms_outputs(name, tmp_path):
  """The paper's four: the same weights, written as a transformers directory (Dinov2Model, DINOv3ViTModel,
  CLIPVisionModel, SiglipVisionModel) and run by transformers, reproduce timm's tokens at every boundary
  (and its pooled output, except DINOv3's: timm pools the patches' mean, transformers the CLS token)."""
  import dataclasses
  import transformers
  from convert import hf
  reference = dict(np.load(DATA / name / 'reference.npz'))
  bb = load_backbone(DATA / name / 'model')
  cfg = dataclasses.replace(bb.config, pool='cls') if bb.config.pool == 'avg' else bb.config
  hf.save(tmp_path / 'hf', cfg, bb.params)
  ref = H.reference(transformers.AutoModel.from_pretrained(tmp_path / 'hf').eval(), reference['images'])
  assert len(ref.hidden_states) == bb.config.depth + 1
  for i, hidden in enumerate(ref.hidden_states):
    name_i = 'embed' if i == 0 else f'block_{i - 1}'
    assert H.rel_err(hidden, reference[name_i]) <= 1e-5, name_i
  assert H.rel_err(ref.last, reference['final']) <= 1e-5
  if cfg is bb.config:
    assert H.rel_err(ref.pooled, reference['pooled']) <= 1e-5


def test_a_timm_directory_is_described_from_its_config_alone(case, monkeypatch):
  from stitchjax import backbone
  _, path, _ = case
  loaded = load_backbone(path).config
  monkeypatch.setattr(backbone, 'load_checkpoint', lambda *a, **k: pytest.fail('describe read the weights'))
  assert backbone.describe(path) == loaded


def test_an_export_of_a_timm_backbone_resizes_and_preprocesses_as_timm(tmp_path):
  from stitchjax import backbone
  path, other = DATA / 'aimv2' / 'model', timm_reference.CASES['aimv2'][3]
  backbone.save_backbone(load_backbone(path), tmp_path / 'export')
  again, direct = load_backbone(tmp_path / 'export', image_size=other), load_backbone(path, image_size=other)
  assert again.config == direct.config and again.preprocessing == direct.preprocessing
  assert direct.preprocessing.backend == 'torchvision'
  jax.tree.map(np.testing.assert_array_equal, again.params, direct.params)


def _edited(tmp_path, name='dinov2', config=None, weights=None):
  out = tmp_path / name
  shutil.copytree(DATA / name / 'model', out)
  if config:
    c = json.loads((out / 'config.json').read_text())
    config(c)
    (out / 'config.json').write_text(json.dumps(c))
  if weights:
    w = safetensors.numpy.load_file(str(out / 'model.safetensors'))
    weights(w)
    safetensors.numpy.save_file(w, str(out / 'model.safetensors'))
  return out


@pytest.mark.parametrize('edit, message', [
    (dict(config=lambda c: c.update(architecture='vit_so150m_patch16_reg4_gap_256')),
     r"timm architecture 'vit_so150m_patch16_reg4_gap_256' is not one stitchjax represents"),
    (dict(config=lambda c: c['model_args'].update(qk_norm=True)), r"missing key 'blocks.0.attn.q_norm.weight'"),
    (dict(config=lambda c: c['model_args'].update(block_fn='ParallelScalingBlock')),
     r"model_args \['block_fn'\] of vit_large_patch14_dinov2 are not ones stitchjax represents"),
    (dict(config=lambda c: c['model_args'].update(global_pool='avg')), r'fc_norm \(a norm after pooling\)'),
    (dict(weights=lambda w: w.pop('blocks.1.ls2.gamma')), r"missing key 'blocks.1.ls2.gamma'"),
    (dict(weights=lambda w: w.update({'blocks.1.attn.q_norm.weight': np.ones(8, np.float32)})),
     r"unexpected keys 'blocks.1.attn.q_norm.weight'"),
    (dict(weights=lambda w: w.update({'pos_embed': w['pos_embed'][:, :-1]})),
     r"key 'pos_embed' gives embed/pos shape \(9, 32\), expected \(10, 32\)"),
])
def test_what_cannot_be_represented_or_loaded_whole_is_refused_by_name(tmp_path, edit, message):
  with pytest.raises(CheckpointError, match=message):
    load_backbone(_edited(tmp_path, **edit))


def _timm_or_skip():
  try:
    import timm
  except Exception as e:  # ImportError, or torchvision's RuntimeError beside a torch it was not built for
    pytest.skip(f'timm does not import here ({type(e).__name__}: {e}); tests/data/timm holds its outputs')
  return timm


@pytest.mark.parametrize('name', CASES)
def test_timm_live_gives_what_the_recorded_references_say(name, tmp_path):
  """Where timm imports: fresh tiny models of each architecture, traced by timm now, match stitchjax too."""
  timm = _timm_or_skip()
  if not timm.is_model(timm_reference.CASES[name][0]):
    pytest.skip(f'timm {timm.__version__} has no {timm_reference.CASES[name][0]}')
  timm_reference.write(tmp_path, name)
  reference = dict(np.load(tmp_path / name / 'reference.npz'))
  _check(load_backbone(tmp_path / name / 'model'), reference, '', 1e-5)
  _check(load_backbone(tmp_path / name / 'model', image_size=timm_reference.CASES[name][3]), reference, '_other', 1e-5)


def test_a_timm_eva02_stitches_into_a_transformers_siglip2_trains_and_exports(tmp_path):
  """EVA-02 (timm: CLS, learned positions and RoPE) into a target without CLS (SigLIP2 NaFlex,
  transformers): FFM lowers its loss, TLT trains the head, and the export reloads to the same logits."""
  import stitchjax
  from stitchjax import export, features, objectives
  H.build('siglip2', tmp_path / 'siglip2')
  src, tgt = load_backbone(DATA / 'eva02' / 'model'), load_backbone(tmp_path / 'siglip2')
  model = stitchjax.stitch(src, tgt, layer=2, kind='mlp', num_classes=2)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (24, 50, 60, 3), np.uint8)
  data = {'image': images, 'label': (images.mean(axis=(1, 2, 3)) > 127.5).astype(np.int32)}
  init = model.init(jax.random.key(0))
  ffm = stitchjax.fit(model, init, data, loss='ffm', lr=1e-2, epochs=5, patience=5, batch_size=8)
  inputs = objectives.stitch_inputs(model, data, 'ffm', 8) | {'mask': np.ones(24, np.float32)}
  loss = lambda p: float(objectives.ffm_loss(model.net, p, model.frozen(with_source=False), inputs))
  assert loss(ffm) < 0.8 * loss(init)
  params = stitchjax.fit(model, ffm, data, loss='tlt', lr=1e-2, epochs=2, patience=2, batch_size=8)
  sources = {role: {'path': str(path), 'image_size': bb.config.image_size, 'digest': features.params_digest(bb.params)}
             for role, path, bb in (('source', DATA / 'eva02' / 'model', src), ('target', tmp_path / 'siglip2', tgt))}
  export.save_stitched(tmp_path / 'export', model.spec, params, ['dark', 'light'], sources)
  np.testing.assert_array_equal(stitchjax.load_stitched(tmp_path / 'export').logits(images[:4]),
                                np.asarray(model.logits(params, model.preprocess(images[:4]))))


def test_every_listed_architecture_is_timms_full_size_layout():
  """Where timm imports: each architecture stitchjax lists, built by timm at full size on the meta device (no
  memory), has exactly the keys and shapes stitchjax expects of it (the tiny references cover the rest)."""
  timm = _timm_or_skip()
  from convert import common
  from stitchjax.vit import ViTConfig
  for arch in filter(timm.is_model, timm_lib.ARCHITECTURES):  # an older timm may lack some
    model = timm.create_model(arch, pretrained=False, num_classes=0, device='meta')
    arrays = {k: np.broadcast_to(np.float32(0), v.shape) for k, v in model.state_dict().items()}
    cfg = ViTConfig(**timm_lib.vit_config(arch, {}, model.pretrained_cfg, arch))
    reader = common.Reader(arch, arrays)
    timm_lib._params(reader, cfg)
    reader.check_all_used(timm_lib.CLASSIFIER)
    want = common.expected_shapes(cfg)
    assert {k: tuple(v.shape) for k, v in reader.out.items()} == {k: tuple(v) for k, v in want.items()}, arch
