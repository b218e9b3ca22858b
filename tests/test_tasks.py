"""The tasks: what differs between classification and segmentation, and nothing else."""
import jax.numpy as jnp
import numpy as np
import pytest

from stitchjax import tasks
from stitchjax.records import Cell


def test_probe_features_are_standardised_by_the_train_split_alone():
  rng = np.random.default_rng(0)
  feats = {s: rng.normal(size=(n, 3)).astype(np.float32) * [1000.0, 1.0, 0.01] + [5.0, -2.0, 0.0]
           for s, n in (('train', 400), ('val', 50), ('test', 60))}
  out = tasks.standardised(feats)
  np.testing.assert_allclose(out['train'].mean(0), 0, atol=1e-4)
  np.testing.assert_allclose(out['train'].std(0), 1, rtol=1e-3)
  mean, std = feats['train'].mean(0), feats['train'].std(0)
  np.testing.assert_allclose(out['test'], (feats['test'] - mean) / (std + 1e-6), rtol=1e-4, atol=1e-4)


def test_a_task_is_chosen_once_and_named_when_wrong():
  assert tasks.make('classification') == tasks.Classification()
  assert tasks.make('segmentation', 28) == tasks.Segmentation(28)
  with pytest.raises(ValueError, match="task='detection' is not one of"):
    tasks.make('detection')
  with pytest.raises(ValueError, match='label_size=None must be a positive int'):
    tasks.make('segmentation')


def test_classification_scores_and_records_accuracy():
  task = tasks.Classification()
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
  batch = {'label': jnp.array([0, 1, 1]), 'mask': jnp.array([1.0, 1.0, 0.0])}  # the third row is padding
  expected = -np.mean([np.log(np.exp(2) / (np.exp(2) + 1)), np.log(np.e / (np.e + 1))])
  np.testing.assert_allclose(task.loss(logits, batch), expected, rtol=1e-6)
  pred = {k: np.asarray(v) for k, v in task.predictions(logits, batch).items()}
  assert task.score(pred, {'label': np.array([0, 1, 1])}) == pytest.approx(2 / 3)
  records = task.test_records(Cell('a', 'b', 2, 'tlt', 'mlp'), pred, np.array([0, 1, 1]), 0.5, lr=0.01)
  assert [(r['split'], r['metric'], r['value']) for r in records] == [('val', 'accuracy', 0.5),
                                                                       ('test', 'accuracy', pytest.approx(2 / 3))]
  assert records[1]['n'] == 3 and records[1]['lr'] == 0.01


def test_segmentation_decodes_to_label_size_and_scores_miou():
  task = tasks.Segmentation(4)
  head = {'kernel': np.eye(3, dtype=np.float32), 'bias': np.zeros(3, np.float32)}
  patches = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 3)), jnp.float32)  # a 2x2 grid, 3 classes
  labels = np.random.default_rng(1).integers(0, 4, (2, 4, 4)).astype(np.uint8)  # 0 is ignored
  logits = task.probe_predictions({'head': head}, {}, {'features': patches, 'label': jnp.asarray(labels)})
  counts = {k: np.asarray(v) for k, v in logits.items()}
  assert counts['intersection'].shape == (2, 3)
  assert counts['label_area'].sum() == (labels > 0).sum()
  miou = task.score(counts, {})
  assert 0.0 <= miou <= 1.0
  assert task.identity() == {'task': 'segmentation', 'label_size': 4}
