"""Exported stitched models: saved atomically, reloaded to the same logits, backbones found or named."""
import json
import shutil

import jax
import numpy as np
import pytest

import helpers as H
import stitchjax
from convert.common import CheckpointError
from stitchjax import export, features, load_stitched

CLASSES = ['red', 'green', 'blue']
SIZES = {'dinov2': 42, 'siglip': 32}
CELL = 'dinov2__siglip__L1__tlt__mlp'


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """A trained-looking stitch (random, non-zero head) exported as the protocol does, under root/work."""
  root = tmp_path_factory.mktemp('export')
  H.build('dinov2_registers', root / 'dinov2')
  H.build('siglip', root / 'siglip')
  bbs = {name: stitchjax.load_backbone(root / name, image_size=size) for name, size in SIZES.items()}
  model = stitchjax.stitch(bbs['dinov2'], bbs['siglip'], layer=1, kind='mlp', num_classes=len(CLASSES))
  params = model.init(jax.random.key(0))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  sources = {role: {'path': str(root / name), 'image_size': SIZES[name],
                    'digest': features.params_digest(bbs[name].params)}
             for role, name in (('source', 'dinov2'), ('target', 'siglip'))}
  export.save_stitched(root / 'work' / 'exports' / CELL, model.spec, params, CLASSES, sources)
  images = [np.random.default_rng(i).integers(0, 256, (40, 48, 3), np.uint8) for i in range(4)]
  return root, root / 'work' / 'exports' / CELL, np.asarray(model.logits(params, model.preprocess(images))), images


def test_an_export_reloads_to_the_logits_it_was_saved_with(exported):
  _, out, logits, images = exported
  model = load_stitched(out)
  assert model.classes == CLASSES and model.task.name == 'classification'
  np.testing.assert_array_equal(model.logits(images), logits)
  np.testing.assert_array_equal(model.predict(images), logits.argmax(-1))
  assert len(set(logits.argmax(-1).tolist())) > 1  # the check can fail: the images are told apart


def test_a_moved_export_finds_its_backbones_or_is_told_where(exported, tmp_path):
  """Relative paths travel with a tree moved whole; backbones moved elsewhere are named at load, digest-checked."""
  root, out, reference, images = exported
  meta = json.loads((out / 'stitched.json').read_text())
  assert meta['backbones']['source']['relative'] == '../../../dinov2'
  moved = tmp_path / 'moved'  # the whole tree, as on another machine
  for name in ('work', 'dinov2', 'siglip'):
    shutil.copytree(root / name, moved / name)
  alone = tmp_path / 'alone'  # the export alone
  shutil.copytree(moved / 'work' / 'exports' / CELL, alone)
  for name in ('dinov2', 'siglip'):  # the recorded absolute paths are gone
    (root / name).rename(root / f'{name}.away')
  try:
    np.testing.assert_array_equal(load_stitched(moved / 'work' / 'exports' / CELL).logits(images), reference)
    with pytest.raises(CheckpointError, match=r"target backbone: .*siglip.*load_stitched\(\.\.\., target="):
      load_stitched(alone, source=moved / 'dinov2')
    np.testing.assert_array_equal(load_stitched(alone, source=moved / 'dinov2', target=moved / 'siglip').logits(images),
                                  reference)
    H.build('siglip', tmp_path / 'other_siglip', seed=1)
    with pytest.raises(CheckpointError, match='target backbone at .*other_siglip is not the checkpoint'):
      load_stitched(alone, source=moved / 'dinov2', target=tmp_path / 'other_siglip')
  finally:
    for name in ('dinov2', 'siglip'):
      (root / f'{name}.away').rename(root / name)


def test_an_export_that_does_not_match_its_spec_is_refused_by_name(exported, tmp_path):
  _, out, _, _ = exported
  with pytest.raises(CheckpointError, match=f'{tmp_path}/stitched.json: not a stitchjax stitched-model export'):
    load_stitched(tmp_path)
  edited = tmp_path / 'edited'
  shutil.copytree(out, edited)
  meta = json.loads((edited / 'stitched.json').read_text())
  (edited / 'stitched.json').write_text(json.dumps(meta | {'format_version': 9}))
  with pytest.raises(CheckpointError, match=r'format_version 9, expected one of \(1, 2, 3\)'):
    load_stitched(edited)
  (edited / 'stitched.json').write_text(json.dumps(meta | {'kind': 'linear'}))  # the params are an MLP's
  with pytest.raises(CheckpointError, match=f"{edited}/params: (missing|unexpected) key 'stitch/"):
    load_stitched(edited)
  (edited / 'stitched.json').write_text(json.dumps(meta | {'classes': CLASSES[:2]}))
  with pytest.raises(CheckpointError, match=f"{edited}/params: key 'head/bias' has shape \\(3,\\), expected \\(2,\\)"):
    load_stitched(edited)
