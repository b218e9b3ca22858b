"""stitchjax: model stitching of vision foundation models in JAX/Flax.

Implements "Revisiting Model Stitching in the Foundation Model Era" (CVPR 2026).
"""
from stitchjax.backbone import Backbone, load_backbone, save_backbone
from stitchjax.vit import ViTConfig


def load_stitched(directory, source=None, target=None):
  """A stitched model exported by the stitch job, its backbones found where the export says or at
  `source` / `target`; see stitchjax/export.py."""
  from stitchjax import export
  return export.load_stitched(directory, source, target)


__all__ = ['Backbone', 'ViTConfig', 'load_backbone', 'load_stitched', 'save_backbone']
