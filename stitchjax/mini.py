"""The committed mini-VFMs and the reference linear probe their accuracies are recorded with.

`python -m stitchjax.mini` re-measures the probe for every committed mini-VFM and writes
`assets/mini/probe.json`; tests re-measure it and compare, which catches regressions in
the backbone code, the data pipeline, the preprocessing and the probe.
"""
import json

import numpy as np

from stitchjax import atomic, config_lib, data, objectives, train
from stitchjax.backbone import load_backbone

# Demo task (classes unseen in pretraining), a fixed subset and a fixed probe schedule: deterministic on CPU.
PROBE = dict(root='/usr/share/datasets/fashion-mnist', classes=(5, 6, 7, 8, 9), per_class=200, lr=0.01, epochs=20,
             batch_size=128, seed=0)
RECORD = config_lib.MINI_DIR / 'probe.json'


def _pooled(bb, split) -> np.ndarray:
  feats = [np.asarray(bb.pool(bb.params, bb.final(bb.params, bb.blocks(bb.params, bb.embed(bb.params, x), 0,
                                                                        bb.config.depth))))
           for x, _, _ in data.batches(split, bb.preprocess, 256, shuffle=False, seed=0)]
  return np.concatenate(feats)


def reference_probe(path) -> float:
  """Test accuracy of a linear probe (AdamW, fixed lr and epochs, no early stopping) on pooled features."""
  bb = load_backbone(path)
  ds = data.load({'kind': 'fashion_mnist', 'root': PROBE['root'], 'classes': PROBE['classes'],
                  'limit_per_class': PROBE['per_class'], 'val_fraction': 0.1, 'seed': PROBE['seed']})
  arrays = {s: {'features': _pooled(bb, ds.splits[s]), 'label': np.asarray(ds.splits[s].labels)}
            for s in ('train', 'test')}
  init = {'head': objectives.head_init(bb.config.dim, len(ds.classes))}
  schedule = train.Schedule(lr=PROBE['lr'], epochs=PROBE['epochs'], patience=PROBE['epochs'],
                            batch_size=PROBE['batch_size'], seed=PROBE['seed'])
  # Scored on train: the schedule is fixed, so validation has nothing to choose.
  params, _ = train.fit(objectives.probe_loss, lambda *a: 0.0, init, {}, arrays['train'], arrays['train'], schedule)
  pred = objectives.evaluate(objectives.probe_predictions, params, {}, arrays['test'], 256)['prediction']
  return float(np.mean(pred == arrays['test']['label']))


def main():
  record = {'probe': PROBE | {'classes': list(PROBE['classes'])},
            'test_accuracy': {name: reference_probe(spec['path']) for name, spec in config_lib.MINI_VFMS.items()}}
  atomic.write_text(RECORD, json.dumps(record, indent=2))
  print(json.dumps(record['test_accuracy'], indent=2))


if __name__ == '__main__':
  main()
