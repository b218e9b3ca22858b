"""The committed mini-VFMs and the reference linear probe their accuracies are recorded with.

`python -m stitchjax.mini` re-measures the probe for every committed mini-VFM and writes
`assets/mini/probe.json`; tests re-measure it and compare, which catches regressions in
the backbone code, the data pipeline, the preprocessing and the probe.
"""
import json

import numpy as np

from stitchjax import atomic, config_lib, data, pretrain
from stitchjax.backbone import load_backbone

# Demo task (classes unseen in pretraining) and a fixed subset: fit on its train split, score on test.
PROBE = dict(root='/usr/share/datasets/fashion-mnist', classes=(5, 6, 7, 8, 9), per_class=200, seed=0)
RECORD = config_lib.MINI_DIR / 'probe.json'


def _pooled(bb, split) -> np.ndarray:
  return np.concatenate([np.asarray(bb.forward(bb.params, x)[1])
                         for x, _, _ in data.batches(split, bb.preprocess, 256, seed=None)])


def reference_probe(path) -> float:
  """Test accuracy of the pretraining's converged linear probe (pretrain.linear_probe_accuracy:
  standardised features, full-batch softmax regression) on the backbone's pooled features.

  Deterministic, with no learning rate or stopping rule to choose, so a change in the number
  means a change in the features: the backbone code, the data pipeline or the preprocessing.
  """
  bb = load_backbone(path)
  ds = data.load({'kind': 'fashion_mnist', 'root': PROBE['root'], 'classes': PROBE['classes'],
                  'limit_per_class': PROBE['per_class'], 'val_fraction': 0.1, 'seed': PROBE['seed']})
  x = {s: _pooled(bb, ds.splits[s]) for s in ('train', 'test')}
  y = {s: np.asarray(ds.splits[s].labels) for s in ('train', 'test')}
  return pretrain.linear_probe_accuracy(x['train'], y['train'], x['test'], y['test'])


def main():
  record = {'probe': PROBE | {'classes': list(PROBE['classes'])},
            'test_accuracy': {name: reference_probe(spec['path']) for name, spec in config_lib.MINI_VFMS.items()}}
  atomic.write_text(RECORD, json.dumps(record, indent=2))
  print(json.dumps(record['test_accuracy'], indent=2))


if __name__ == '__main__':
  main()
