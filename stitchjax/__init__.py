"""stitchjax: model stitching of vision foundation models in JAX/Flax.

Implements "Revisiting Model Stitching in the Foundation Model Era" (CVPR 2026).
"""
from stitchjax.backbone import Backbone, load_backbone, save_backbone
from stitchjax.vit import ViTConfig


def load_stitched(directory):
  """A stitched classifier exported by the stitch job; see stitchjax/export.py."""
  from stitchjax import export
  return export.load_stitched(directory)


__all__ = ['Backbone', 'ViTConfig', 'load_backbone', 'load_stitched', 'save_backbone']
