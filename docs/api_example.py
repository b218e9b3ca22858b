"""Stitching two backbones with the Python API: the mini-VFMs on unseen Fashion-MNIST classes.

    python docs/api_example.py            # ~1 minute on 2 CPU cores

Trains dino_mini's blocks [0, 4) -> an MLP stitch -> siglip_mini's blocks [4, 8) with the paper's
recipe (FFM, then TLT), and the self-stitch siglip_mini -> siglip_mini the same way, and prints both
test accuracies. The mini-VFMs are small models trained by stitchjax (configs/pretrain_mini.py),
not DINOv2 or SigLIP. Needs Debian's Fashion-MNIST (apt-get install dataset-fashion-mnist).
"""
import argparse

import jax
import numpy as np

import stitchjax
from stitchjax import config_lib, data


def as_arrays(split) -> dict:
  return {'image': np.stack([split.image(i) for i in range(len(split))]), 'label': np.asarray(split.labels)}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--fashion-mnist', default='/usr/share/datasets/fashion-mnist')
  parser.add_argument('--per-class', type=int, default=60, help='images per class in each split')
  parser.add_argument('--epochs', type=int, default=8)
  args = parser.parse_args(argv)

  splits = data.load(dict(kind='fashion_mnist', root=args.fashion_mnist, classes=(5, 6, 7, 8, 9),
                          limit_per_class=args.per_class, val_fraction=0.2, seed=0)).splits
  train, val, test = (as_arrays(splits[s]) for s in ('train', 'val', 'test'))
  backbones = {name: stitchjax.load_backbone(spec['path'], image_size=spec['image_size'])
               for name, spec in config_lib.MINI_VFMS.items()}

  accuracy = {}
  for source in ('dino_mini', 'siglip_mini'):
    model = stitchjax.stitch(backbones[source], backbones['siglip_mini'], layer=4, kind='mlp', num_classes=5)
    params = model.init(jax.random.key(0))
    params = stitchjax.fit(model, params, train, loss='ffm_tlt', val=val, lr=1e-3, epochs=args.epochs,
                           batch_size=32)
    x = model.preprocess(test['image'])  # the source's processor: the source sees the pixels
    tokens, pooled = model.apply(params, x), model.features(params, x)
    assert tokens.shape[:2] == (len(x), model.spec.target.num_tokens) and pooled.shape == (len(x), model.spec.target.dim)
    accuracy[f'{source}->siglip_mini'] = float(np.mean(model.predict(params, x) == test['label']))
  for route, acc in accuracy.items():
    print(f'{route:28s} L4 mlp ffm_tlt  test accuracy {100 * acc:.1f}% (n={len(test["label"])}, chance 20%)')
  return accuracy


if __name__ == '__main__':
  main()
