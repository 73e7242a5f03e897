"""EfficientNet-B0 (timm's `efficientnet_b0`, 4.0M parameters with 8 classes) on pbc96 at 96x96,
bfloat16, for a GPU or TPU; one of the report's comparison models.

BatchNorm statistics are averaged over all devices of the global batch in training and frozen in
evaluation. ImageNet weights: `python -m bloodcell_jax.pretrained efficientnet_b0.ra_in1k`, then
`--config.model.init_from=efficientnet_b0.ra_in1k`.

Result: not measured yet; record it here with the machine and the date.
"""

from configs.accelerator import efficientnet_config


def get_config():
  return efficientnet_config("efficientnet_b0")
