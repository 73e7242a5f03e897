"""The base configuration every config file starts from; its fields and their defaults are defined
once, in bloodcell_jax/config/defaults.py. Import this and override:

  from configs import default
  def get_config():
    config = default.get_config()
    config.train.num_epochs = 10
    return config
"""

from bloodcell_jax.config.defaults import IMAGENET_MEAN, IMAGENET_STD, get_config

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "get_config"]
