"""stitchjax: model stitching of vision foundation models in JAX/Flax.

Implements "Revisiting Model Stitching in the Foundation Model Era" (CVPR 2026).

    model = stitchjax.stitch('path/to/dinov2', 'path/to/siglip2', layer=14, kind='mlp', num_classes=10)
    params = model.init(jax.random.key(0))
    params = stitchjax.fit(model, params, {'image': uint8_images, 'label': labels}, loss='ffm_tlt')
    logits = model.logits(params, model.preprocess(uint8_images))

See docs/api.md.
"""
from stitchjax.backbone import Backbone, load_backbone, save_backbone
from stitchjax.export import load_stitched
from stitchjax.model import StitchedModel, stitch
from stitchjax.objectives import fit
from stitchjax.vit import ViTConfig

__all__ = ['Backbone', 'StitchedModel', 'ViTConfig', 'fit', 'load_backbone', 'load_stitched', 'save_backbone',
           'stitch']
