"""stitchjax: model stitching of vision foundation models in JAX/Flax.

Implements "Revisiting Model Stitching in the Foundation Model Era" (CVPR 2026).

    model = stitchjax.stitch('path/to/dinov2', 'path/to/siglip2', layer=14, kind='mlp', num_classes=10)
    params = model.init(jax.random.key(0))
    params = stitchjax.fit(model, params, {'image': uint8_images, 'label': labels}, loss='ffm_tlt')
    logits = model.logits(params, model.preprocess(uint8_images))

See docs/api.md.
"""
import importlib

# Public name -> the module that defines it, imported on first use. The converters (convert/) build on
# stitchjax.vit while stitchjax.backbone loads through them: importing either package first must not
# run the other's half-initialised __init__, so this one imports nothing eagerly.
_PUBLIC = {'Backbone': 'backbone', 'load_backbone': 'backbone', 'save_backbone': 'backbone',
           'load_stitched': 'export', 'StitchedModel': 'model', 'stitch': 'model', 'fit': 'objectives', 'scout': 'scouting',
           'ViTConfig': 'vit'}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
  if name in _PUBLIC:
    return getattr(importlib.import_module(f'stitchjax.{_PUBLIC[name]}'), name)
  raise AttributeError(f'module stitchjax has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(_PUBLIC))
