"""stitchjax: model stitching of vision foundation models in JAX/Flax.

Implements "Revisiting Model Stitching in the Foundation Model Era" (CVPR 2026).
"""
from stitchjax.backbone import Backbone, load_backbone, save_backbone
from stitchjax.vit import ViTConfig

__all__ = ['Backbone', 'ViTConfig', 'load_backbone', 'save_backbone']
