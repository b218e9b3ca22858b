"""ADE20K semantic segmentation, Table 2's segmentation column: stitched vs self-stitched at layers 14 and 22.

    python run.py --config configs/ade20k.py --config.data.root=/data/ADEChallengeData2016 \
        --config.backbones.dinov2.path=/ckpt/dinov2-large --config.backbones.siglip2.path=/ckpt/siglip2-large-patch16-384
    # or a prepared tfds scene_parse150 (read without TensorFlow):
    python run.py --config configs/ade20k.py --config.data.kind=scene_parse150 --config.data.root=/data/tensorflow_datasets

A linear decoder on the final patch tokens, bilinearly upsampled to label_size x label_size,
per-pixel cross-entropy ignoring label 0, mIoU over the test split (the 2,000 labelled
validation images; val is 10% of training). Images go through each backbone's processor with
a square resize of the whole image; labels are resized with nearest neighbour to label_size
(stitchjax/segmentation.py). Methods: `lp` (decoder on each backbone alone), `ffm` (+ decoder
on the frozen stitched model), `tlt` and `ffm_tlt` with the segmentation loss. label_size=336
is the DINOv2 input resolution; at batch 128 the upsampled float32 logits alone take
128 x 336^2 x 150 x 4 B = 8.7 GB, so lower `train.batch_size.default` or `label_size` on smaller GPUs.
"""
from stitchjax import config_lib


def get_config():
  c = config_lib.stitching('workdir/ade20k', dict(kind='ade20k', root='data/ADEChallengeData2016', val_fraction=0.1,
                                                  seed=0),
                           task='segmentation', label_size=336)
  c.layers = '14,22'
  c.methods = 'lp,ffm,tlt,ffm_tlt'
  return c
