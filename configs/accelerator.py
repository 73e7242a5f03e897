"""Shared settings of the configs meant for a GPU or TPU (convnext_<size>.py, efficientnet*.py).

96x96 inputs (the data's native size; ConvNeXt is fully convolutional), bfloat16 compute with
float32 parameters and optimiser state, Lion with balanced class weights. From scratch by default;
to fine-tune ImageNet weights, port them once (`python -m bloodcell_jax.pretrained
convnext_tiny.fb_in22k_ft_in1k`) and add `--config.model.init_from=convnext_tiny.fb_in22k_ft_in1k
--config.optim.layer_decay=0.8` (and a lower learning rate, e.g. 5e-5).
"""

from configs import default

# Stochastic depth rates from the ConvNeXt paper's ImageNet-1k recipes, per size.
DROP_PATH = {"atto": 0.0, "femto": 0.0, "pico": 0.0, "nano": 0.05, "tiny": 0.1, "small": 0.4, "base": 0.5,
             "large": 0.5, "xlarge": 0.5}


def accelerator_config():
  """The data, precision, optimiser and schedule every accelerator config shares; the model is the caller's."""
  config = default.get_config()
  config.data.source = "../shared/data/pbc96"
  config.data.image_size = 96
  config.model.dtype = "bfloat16"
  config.optim.learning_rate = 2e-4
  config.optim.weight_decay = 0.05
  config.optim.warmup_epochs = 2.0
  config.train.batch_size = 128
  config.train.num_epochs = 60
  config.train.early_stopping_patience = 15
  return config


def convnext_config(variant: str):
  config = accelerator_config()
  config.model.name = "convnext"
  config.model.variant = variant
  config.model.drop_path_rate = DROP_PATH[variant]
  return config


# timm's training recipes: (classifier dropout, stochastic depth) per EfficientNet-family variant.
EFFICIENTNET_REGULARISATION = {"efficientnet_b0": (0.2, 0.2), "tf_efficientnetv2_s": (0.2, 0.2),
                               "tf_efficientnetv2_m": (0.3, 0.2), "mobilenetv3_small_100": (0.2, 0.0)}


def efficientnet_config(variant: str):
  """EfficientNet / EfficientNetV2 / MobileNetV3 (timm's name in `variant`) with BatchNorm; to
  fine-tune ImageNet weights, port them once (`python -m bloodcell_jax.pretrained
  efficientnet_b0.ra_in1k`) and add `--config.model.init_from=efficientnet_b0.ra_in1k`."""
  config = accelerator_config()
  config.model.name = "efficientnet"
  config.model.variant = variant
  config.model.head_dropout, config.model.drop_path_rate = EFFICIENTNET_REGULARISATION[variant]
  return config
