"""EfficientNetV2-M (timm's `tf_efficientnetv2_m`, TensorFlow "SAME" padding, 52.9M parameters with
8 classes) on pbc96 at 96x96, bfloat16, for a GPU or TPU; one of the report's comparison models.

ImageNet-21k weights: `python -m bloodcell_jax.pretrained tf_efficientnetv2_m.in21k_ft_in1k`, then
`--config.model.init_from=tf_efficientnetv2_m.in21k_ft_in1k`.

Result: not measured yet; record it here with the machine and the date.
"""

from configs.accelerator import efficientnet_config


def get_config():
  return efficientnet_config("tf_efficientnetv2_m")
