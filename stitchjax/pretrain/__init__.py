"""Pretraining of the project's own mini-VFMs (stitchjax/assets/mini), the demo's backbones.

Two objectives on one ViT (stitchjax/vit.py), mirroring the heterogeneity the paper
stitches across (DINOv2 vs SigLIP2, paper Sec. 3.1):

* `dino` (stitchjax/pretrain/dino.py): self-distillation with no labels (Caron et al. 2021);
* `siglip` (stitchjax/pretrain/siglip.py): the sigmoid loss of SigLIP (Zhai et al. 2023) with
  learned label embeddings in place of a text tower.

Inputs are uint8 images; each step augments them on device (`augment`, seeded by the
step) and normalises them exactly as the exported processor config does, so
`load_backbone(export).preprocess` gives what the model was trained on.

The job 'pretrain' (stitchjax/jobs/pretrain.py, configs/pretrain_mini.py) trains every configured model,
logs loss curves and linear-probe and k-NN accuracies on held-out classes, and writes each
backbone as a transformers directory (Dinov2Model, SiglipVisionModel: `convert.hf.save`) that
both `load_backbone` and transformers' `from_pretrained` read, plus a small JSON log of the
recipe and curves.
"""
from stitchjax.pretrain.augment import Augment, augment_one, crop_box, jitter, normalise, resized_crop, to_unit, views
from stitchjax.pretrain.training import State, learning_rate, optimizer
from stitchjax.pretrain.dino import Dino, DinoHead, at_size, dino_init, dino_loss, dino_schedule, dino_scores, dino_step, ema, sinkhorn_knopp
from stitchjax.pretrain.siglip import Siglip, siglip_init, siglip_logits, siglip_step, sigmoid_loss
from stitchjax.pretrain.evaluate import features, knn_accuracy, label_accuracy, linear_probe_accuracy, probe
from stitchjax.pretrain.loop import PROCESSOR, images, pixel_stats, processor_config, train_model

__all__ = ['Augment', 'Dino', 'DinoHead', 'PROCESSOR', 'Siglip', 'State', 'at_size', 'augment_one', 'crop_box', 'dino_init', 'dino_loss', 'dino_schedule', 'dino_scores', 'dino_step', 'ema', 'features', 'images', 'jitter', 'knn_accuracy', 'label_accuracy', 'learning_rate', 'linear_probe_accuracy', 'normalise', 'optimizer', 'pixel_stats', 'probe', 'processor_config', 'resized_crop', 'siglip_init', 'siglip_logits', 'siglip_step', 'sigmoid_loss', 'sinkhorn_knopp', 'to_unit', 'train_model', 'views']
