"""Semantic segmentation (paper §5.1, A.2.5): data, linear decoder, loss, mIoU, and protocol runs."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from stitchjax import (backbone, config_lib, data, load_stitched, mini, preprocess, protocol, report,
                       segmentation, train)

FASHION = pathlib.Path(data.FASHION_MNIST_ROOT)
needs_fashion = pytest.mark.skipif(not (FASHION / 'train-images-idx3-ubyte.gz').exists(),
                                   reason='Fashion-MNIST missing: apt-get install dataset-fashion-mnist')


# --------------------------------------------------------------------------------------- ADE20K layout


def _ade(root: pathlib.Path, sizes: dict) -> dict:
  """A miniature ADEChallengeData2016: {folder: [(W, H), ...]} -> {(folder, stem): annotation array}."""
  rng = np.random.default_rng(0)
  out = {}
  for folder, shapes in sizes.items():
    (root / 'images' / folder).mkdir(parents=True)
    (root / 'annotations' / folder).mkdir(parents=True)
    for i, (w, h) in enumerate(shapes):
      stem = f'ADE_{folder[:5]}_{i:08d}'
      Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / 'images' / folder / f'{stem}.jpg')
      labels = rng.integers(0, 151, (h, w), dtype=np.uint8)
      Image.fromarray(labels).save(root / 'annotations' / folder / f'{stem}.png')
      out[(folder, stem)] = labels
  return out


def test_ade20k_layout_reads_images_and_annotations(tmp_path):
  truth = _ade(tmp_path, {'training': [(40, 30), (32, 48), (50, 50), (20, 36)], 'validation': [(33, 21), (40, 40)]})
  d = data.load({'kind': 'ade20k', 'root': str(tmp_path), 'val_fraction': 0.25})
  assert d.task == 'segmentation' and len(d.classes) == 150 and d.classes[0] == 'wall' and d.classes[-1] == 'flag'
  assert [len(d.splits[s]) for s in ('train', 'val', 'test')] == [3, 1, 2]
  for name, folder in (('train', 'training'), ('val', 'training'), ('test', 'validation')):
    split = d.splits[name]
    for i in range(len(split)):
      stem = pathlib.Path(split.reader.paths[split.keys[i]]).stem
      np.testing.assert_array_equal(split.annotation(i), truth[(folder, stem)])
      assert split.image(i).shape == (*truth[(folder, stem)].shape, 3)
    assert data.check_images(split, name, skip_corrupt=False, annotated=True)[1] == []
  # The fingerprint (feature and label cache key) covers the annotations.
  before = d.splits['test'].fingerprint
  path = pathlib.Path(d.splits['test'].reader.annotations[0])
  Image.fromarray(np.zeros((21, 33), np.uint8)).save(path)
  assert data.load({'kind': 'ade20k', 'root': str(tmp_path), 'val_fraction': 0.25}).splits['test'].fingerprint != before


def test_ade20k_errors_name_what_is_wrong(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'images/training: no such directory.*ADEChallengeData2016'):
    data.load({'kind': 'ade20k', 'root': str(tmp_path)})
  _ade(tmp_path, {'training': [(20, 20), (20, 20)], 'validation': [(20, 20)]})
  (tmp_path / 'annotations' / 'training' / 'ADE_train_00000001.png').unlink()
  with pytest.raises(ValueError, match=r'images/training have no .png partner.*ADE_train_00000001'):
    data.load({'kind': 'ade20k', 'root': str(tmp_path)})
  Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / 'annotations' / 'training' / 'ADE_train_00000001.png')
  Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / 'annotations' / 'validation' / 'ADE_extra.png')
  with pytest.raises(ValueError, match=r'annotations/validation have no .jpg partner.*ADE_extra'):
    data.load({'kind': 'ade20k', 'root': str(tmp_path)})
  (tmp_path / 'annotations' / 'validation' / 'ADE_extra.png').unlink()
  test = data.load({'kind': 'ade20k', 'root': str(tmp_path)}).splits['test']
  bad = pathlib.Path(test.reader.annotations[0])
  Image.fromarray(np.zeros((20, 21), np.uint8)).save(bad)  # 21 wide, its image 20
  with pytest.raises(ValueError, match=rf'{bad}: annotation is 21x20 .* image is 20x20'):
    data.check_images(test, 'test', skip_corrupt=False, annotated=True)
  Image.fromarray(np.full((20, 20), 151, np.uint8)).save(bad)
  with pytest.raises(ValueError, match=rf'{bad}: annotation value 151 exceeds the 150 classes'):
    test.annotation(0)
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(bad)
  with pytest.raises(ValueError, match=rf"{bad}: annotation has PIL mode 'RGB'"):
    test.annotation(0)


@needs_fashion
def test_fashion_mnist_seg_labels_follow_the_pixels():
  d = data.load({'kind': 'fashion_mnist_seg', 'classes': (5, 8), 'limit_per_class': 5, 'val_fraction': 0.2})
  assert d.classes == ['background', *data.FASHION_MNIST_CLASSES] and d.task == 'segmentation'
  split = d.splits['train']
  for i in range(len(split)):
    gray = split.image(i)[..., 0]
    garment = 2 + (5, 8)[split.labels[i]]  # annotation value = 2 + Fashion-MNIST class id
    want = np.zeros_like(gray)
    want[gray >= 48], want[gray <= 8] = garment, 1
    np.testing.assert_array_equal(split.annotation(i), want)
    assert (want == garment).any() and (want == 1).any() and (want == 0).any()
  with pytest.raises(ValueError, match='background=50, data.foreground=48'):
    data.load({'kind': 'fashion_mnist_seg', 'background': 50})


# --------------------------------------------------------------------------------------- decoder, loss, mIoU


def _one_hot_logits(pred: np.ndarray, num_classes: int):
  return jnp.asarray(np.eye(num_classes, dtype=np.float32)[pred] * 10)


def test_miou_matches_a_hand_computed_example():
  # 3 classes; annotations 0 = ignored, k = class k-1. Two images of 2x3 pixels.
  labels = np.array([[[1, 1, 2], [2, 0, 0]],
                     [[1, 2, 2], [1, 1, 0]]], np.uint8)
  pred = np.array([[[0, 1, 1], [1, 2, 2]],   # the ignored pixels predict class 2: they must not count
                   [[0, 0, 1], [2, 0, 1]]])
  counts = jax.tree.map(np.asarray, segmentation.pixel_counts(_one_hot_logits(pred, 3), labels))
  # Labelled pixels (label class, predicted class): image 0: (0,0) (0,1) (1,1) (1,1); image 1: (0,0) (1,0) (1,1)
  # (0,2) (0,0). Class 0: label 5, pred 4, intersection 3 -> IoU 3/6. Class 1: label 4, pred 4, intersection 3
  # -> 3/5. Class 2: never labelled, predicted once -> 0/1; with ignored pixels it would have been 0/3.
  np.testing.assert_array_equal(counts['intersection'].sum(0), [3, 3, 0])
  np.testing.assert_array_equal(counts['label_area'], [[2, 2, 0], [3, 2, 0]])
  np.testing.assert_array_equal(counts['pred_area'], [[1, 3, 0], [3, 1, 1]])
  m = segmentation.miou(counts)
  np.testing.assert_allclose(m['iou'], [3 / 6, 3 / 5, 0.0])
  assert m['miou'] == pytest.approx((3 / 6 + 3 / 5 + 0.0) / 3)
  assert m['pixel_accuracy'] == pytest.approx(6 / 9)
  # A class in neither labels nor predictions is left out of the mean (mmseg's nanmean), not counted as 0 or 1.
  wider = segmentation.miou(jax.tree.map(lambda a: np.pad(a, ((0, 0), (0, 2))), counts))
  assert np.isnan(wider['iou'][3:]).all() and wider['miou'] == pytest.approx(m['miou'])


def _bilinear_reference(x: np.ndarray, size: int) -> np.ndarray:
  """torch.nn.functional.interpolate(mode='bilinear', align_corners=False) of (g, g, C), written out."""
  g = x.shape[0]
  src = np.maximum((np.arange(size) + 0.5) * g / size - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(int), g - 1)
  hi = np.minimum(lo + 1, g - 1)
  w = (src - lo)[:, None]
  rows = x[lo] * (1 - w)[:, :, None] + x[hi] * w[:, :, None]
  return rows[:, lo] * (1 - w.T)[:, :, None] + rows[:, hi] * w.T[:, :, None]


def test_decoder_upsamples_bilinearly_to_the_label_size():
  rng = np.random.default_rng(0)
  patches = rng.normal(size=(2, 9, 5)).astype(np.float32)  # a 3x3 grid of 5-dim tokens
  head = {'kernel': jnp.asarray(rng.normal(size=(5, 4)), jnp.float32), 'bias': jnp.arange(4, dtype=jnp.float32)}
  logits = np.asarray(segmentation.decode(head, patches, 12))
  assert logits.shape == (2, 12, 12, 4)
  per_patch = (patches @ np.asarray(head['kernel']) + np.arange(4)).reshape(2, 3, 3, 4)
  for b in range(2):
    np.testing.assert_allclose(logits[b], _bilinear_reference(per_patch[b], 12), rtol=1e-5, atol=1e-5)
  # Upsampling by 4 puts pixel (1, 1)'s centre at 0.375 of the first patch cell: an exact blend.
  np.testing.assert_allclose(np.asarray(segmentation.decode(head, patches, 3)), per_patch, rtol=1e-6, atol=1e-6)


def test_pixel_loss_ignores_label_zero_and_padding_rows():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 4, 4, 5)).astype(np.float32)
  labels = rng.integers(0, 6, (3, 4, 4)).astype(np.uint8)
  mask = np.array([1, 1, 0], np.float32)
  ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, np.maximum(labels.astype(int) - 1, 0)))
  keep = (labels > 0) & (mask[:, None, None] > 0)
  want = ce[keep].mean()
  assert float(segmentation.pixel_loss(logits, labels, mask)) == pytest.approx(want, rel=1e-6)
  labels[2] = 1 + (labels[2] % 5)  # the padding row's labels must not matter
  assert float(segmentation.pixel_loss(logits, labels, mask)) == pytest.approx(want, rel=1e-6)


def test_label_maps_resize_with_nearest_neighbour(tmp_path):
  _ade(tmp_path / 'ade', {'training': [(4, 4), (6, 2)], 'validation': [(4, 4)]})
  test = data.load({'kind': 'ade20k', 'root': str(tmp_path / 'ade')}).splits['test']
  maps = segmentation.label_maps(test, 2, tmp_path / 'labels')
  # 4 -> 2: output pixel i takes the source pixel under its centre, (i + 0.5) * 2 -> rows/columns 1 and 3.
  np.testing.assert_array_equal(maps[0], test.annotation(0)[1::2, 1::2])
  assert maps.dtype == np.uint8 and maps.shape == (1, 2, 2)
  assert segmentation.label_maps(test, 2, tmp_path / 'labels').filename == maps.filename  # cached


def test_dense_preprocessing_keeps_the_processor_but_not_its_crop():
  bb = backbone.Backbone(None, {}, preprocess.for_family('dinov2', 28))
  assert bb.preprocessing.crop == 28  # DINOv2: shortest edge, then center crop
  p = segmentation.dense(bb).preprocessing
  assert (p.resize, p.size, p.crop) == ('square', 28, None)
  assert (p.resample, p.mean, p.std) == (bb.preprocessing.resample, bb.preprocessing.mean, bb.preprocessing.std)
  image = np.random.default_rng(0).integers(0, 256, (28, 40, 3), dtype=np.uint8)
  out = p([image])[0]  # the whole image, squashed, with the processor's filter and normalisation
  want = np.asarray(Image.fromarray(image).resize((28, 28), Image.BICUBIC), np.float64) / 255
  np.testing.assert_allclose(out, ((want.astype(np.float32) - p.mean) / p.std), atol=1e-6)


# --------------------------------------------------------------------------------------- protocol runs


def _seg_config(workdir, backbones, **data_options):
  c = config_lib.stitching(str(workdir), dict(kind='fashion_mnist_seg', classes=(5, 7, 8), limit_per_class=20,
                                              val_fraction=0.25, seed=0, **data_options),
                           backbones=backbones, task='segmentation', label_size=28)
  names = list(backbones)
  c.pairs = f'{names[0]}:{names[1]}'
  c.layers = '6'
  c.methods = 'lp,ffm_tlt'  # ffm_tlt runs the ffm matching and the segmentation tlt; tlt differs only in init
  c.dtype = 'float32'
  c.train.epochs, c.train.patience, c.train.lrs = 2, 2, '0.01'
  c.train.batch_size = {'lfm': 16, 'default': 16}
  c.feature_batch_size = 32
  return c


MINI = mini.RECORD.exists()


@pytest.fixture(scope='module')
def seg_run(tmp_path_factory):
  """The protocol on the mini-VFMs, or before their weights exist on seeded random SigLIP / DINOv2 layouts
  (plumbing only: they know nothing); plus the ffm cell of the stitched route (its decoder trains on the
  frozen stitched model). Returns (config, records, (source, target))."""
  root = tmp_path_factory.mktemp('seg')
  if MINI:
    backbones = config_lib.MINI_VFMS
  else:
    backbones = {}
    for name, family, size in (('siglip', 'siglip', 32), ('dinov2', 'dinov2', 28)):
      spec = config_lib.ml_collections.ConfigDict({'path': f'init:{family}', 'image_size': size})
      backbone.save_backbone(backbone.configured(name, spec, 0), root / name)
      backbones[name] = {'path': str(root / name), 'image_size': size}
  c = _seg_config(root / 'work', backbones)
  source, target = list(backbones)
  records = protocol.run(c)
  records += protocol.runner(c).run(protocol.Cell(source, target, 6, 'ffm', 'mlp'))
  return c, records, (source, target)


@needs_fashion
def test_segmentation_cells_record_miou(seg_run):
  config, records, (source, target) = seg_run
  have = {(r['source'], r['target'], r['layer'], r['method'], r['split'], r['metric']) for r in records}
  want = {(b, b, None, 'lp', s, 'miou') for b in (source, target) for s in ('val', 'test')}
  for route in ((source, source), (target, target), (source, target)):
    want |= {(*route, 6, 'ffm_tlt', s, 'miou') for s in ('val', 'test')}
  want |= {(source, target, 6, 'ffm', s, m) for s, m in (('val', 'miou'), ('test', 'miou'), ('val', 'match_loss'),
                                                         ('test', 'layer_distance'), ('test', 'final_distance'))}
  assert want <= have, sorted(want - have)
  assert not any(r['metric'] == 'accuracy' for r in records)
  work = pathlib.Path(config.workdir)
  test_n = len(data.load(config.data).splits['test'])
  for r in records:
    if r['metric'] in ('miou', 'pixel_accuracy'):
      assert 0.0 <= r['value'] <= 1.0
    if r['split'] == 'test' and r['metric'] == 'miou':
      assert r['n'] == test_n
      # The recorded test mIoU is the one its saved per-image counts give.
      counts = np.load(work / 'cells' / protocol.Cell(r['source'], r['target'], r['layer'], r['method'],
                                                      r['stitch_layer']).id / 'test_counts.npz')
      assert segmentation.miou(dict(counts))['miou'] == pytest.approx(r['value'])
  # Table 2's segmentation column: the report shows the stitched, self-stitched and probe mIoUs.
  report.write(work)
  table2 = (work / 'tables.md').read_text().split('### Table 2')[1].split('###')[0]
  assert 'test mIoU %' in table2
  stitched = next(r for r in records if (r['source'], r['target'], r['method'], r['split'], r['metric'])
                  == (source, target, 'ffm_tlt', 'test', 'miou'))
  assert f'| {source}→{target} | {100 * stitched["value"]:.1f} |' in table2
  findings = (work / 'report.md').read_text()
  assert f'Test mIoU over n = {test_n} test examples' in findings
  assert f'Stitched vs self-stitched ({source}→{target}, FFM→TLT):** beats both self-stitches (mIoU: no standard error)' in findings


@needs_fashion
def test_the_exported_segmenter_predicts_the_recorded_test_pixels(seg_run):
  config, _, (source, target) = seg_run
  work = pathlib.Path(config.workdir)
  cell = protocol.Cell(source, target, 6, 'ffm_tlt', 'mlp').id
  model = load_stitched(work / 'exports' / cell)
  assert model.task.name == 'segmentation' and model.classes == data.load(config.data).classes
  test = data.load(config.data).splits['test']
  maps = model.predict(np.stack([test.image(i) for i in range(len(test))]))
  assert maps.shape == (len(test), 28, 28)
  labels = segmentation.label_maps(test, 28, work / 'cache' / 'labels')
  counts = segmentation.pixel_counts(jax.nn.one_hot(maps, len(model.classes)), labels)
  saved = np.load(work / 'cells' / cell / 'test_counts.npz')
  # The run scored cached source tokens and the export recomputes them from pixels: equal up to float32
  # rounding, which may move a pixel whose two best classes tie.
  for name in ('intersection', 'pred_area', 'label_area'):
    assert np.abs(np.asarray(counts[name]) - saved[name]).sum() <= 0.001 * saved['label_area'].sum(), name


@needs_fashion
def test_segmentation_rerun_computes_nothing(seg_run, monkeypatch):
  config, records, (source, target) = seg_run
  ffm = protocol.Cell(source, target, 6, 'ffm', 'mlp')
  assert protocol.runner(config).run(ffm) == [r for r in records if r['method'] == 'ffm']
  before = (pathlib.Path(config.workdir) / 'results.json').read_text()
  monkeypatch.setattr(train, 'fit', lambda *a, **k: pytest.fail('a finished unit was retrained'))
  protocol.run(config)
  assert (pathlib.Path(config.workdir) / 'results.json').read_text() == before


@needs_fashion
@pytest.mark.skipif(not MINI, reason=f'mini-VFM weights not there yet ({mini.RECORD} is written by '
                                     'configs/pretrain_mini.py); the protocol tests above ran on random layouts')
def test_mini_vfms_segment_the_garments(seg_run):
  """The mini-VFMs on fashion_mnist_seg: every decoder beats predicting the most frequent pixel class."""
  config, records, _ = seg_run
  labels = segmentation.label_maps(data.load(config.data).splits['test'], 28, pathlib.Path(config.workdir) / 'labels')
  area = np.bincount(labels[labels > 0].ravel() - 1, minlength=len(data.PIXEL_CLASSES[config.data.kind]))
  # Predicting the majority class everywhere: IoU = its share of labelled pixels, and 0 for every other labelled class.
  baseline = area.max() / area.sum() / np.count_nonzero(area)
  test = {(r['source'], r['target'], r['method']): r['value'] for r in records
          if r['split'] == 'test' and r['metric'] == 'miou'}
  assert len(test) == 2 + 3 + 1  # two probes; ffm_tlt of two self-stitches and the stitched route; its ffm
  for key, value in test.items():
    assert value > baseline + 0.1, (key, value, baseline)


def test_task_and_data_kind_must_agree(tmp_path):
  c = config_lib.stitching(str(tmp_path), dict(kind='fashion_mnist'), task='segmentation', label_size=28)
  with pytest.raises(ValueError, match=r"config.task='segmentation', but config.data.kind='fashion_mnist' is a "
                                       'classification dataset'):
    protocol.validate(c)
  c = config_lib.stitching(str(tmp_path), dict(kind='ade20k', root=str(tmp_path)))
  with pytest.raises(ValueError, match=r"config.task='classification', but config.data.kind='ade20k'"):
    protocol.validate(c)
  c = config_lib.stitching(str(tmp_path), dict(kind='ade20k', root=str(tmp_path)), task='segmentation', label_size=0)
  with pytest.raises(ValueError, match='config.label_size=0 must be a positive int'):
    protocol.validate(c)


def test_scene_parse150_from_tfds_without_tensorflow(tmp_path):
  """A tiny array_record 'scene_parse150' (built as tests/test_data.py builds its tfds dataset)."""
  import importlib.resources
  import io
  import sys
  tfds = pytest.importorskip('tensorflow_datasets')
  rng = np.random.default_rng(0)
  truth = {}

  def png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, 'PNG')
    return buf.getvalue()

  with pytest.MonkeyPatch.context() as mp, tfds.core.registered.skip_registration():
    if 'importlib_resources' not in sys.modules:  # tfds 4.9.10 preparing needs it; the stdlib has the class
      mp.setitem(sys.modules, 'importlib_resources', importlib.resources)

    class SceneParse150(tfds.core.GeneratorBasedBuilder):
      VERSION = tfds.core.Version('1.0.0')

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'annotation': tfds.features.Image(shape=(None, None, 1))}))

      def _split_generators(self, dl_manager):
        return {'train': self._generate_examples(4, 0), 'test': self._generate_examples(2, 100)}

      def _generate_examples(self, n, offset):
        for i in range(n):
          labels = rng.integers(0, 151, (6 + i, 9), dtype=np.uint8)
          labels[0, 0] = offset + i  # identifies the record (tfds shuffles on write)
          truth[offset + i] = labels
          yield i, {'image': png(np.full((6 + i, 9, 3), i, np.uint8)), 'annotation': png(labels)}

    SceneParse150(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  d = data.load({'kind': 'scene_parse150', 'root': str(tmp_path), 'val_fraction': 0.25})
  assert 'tensorflow' not in sys.modules and len(d.classes) == 150
  assert [len(d.splits[s]) for s in ('train', 'val', 'test')] == [3, 1, 2]
  for name in ('train', 'val', 'test'):
    split = d.splits[name]
    for i in range(len(split)):
      labels = split.annotation(i)
      np.testing.assert_array_equal(labels, truth[int(labels[0, 0])])
    assert data.check_images(split, name, skip_corrupt=False, annotated=True)[1] == []
