"""A small ConvNeXt on the PBC folder (../shared/data/pbc96), made to train on a laptop CPU.

64x64 inputs, ConvNeXt blocks (1, 1, 3, 1) x (32, 64, 128, 256) channels, Lion, balanced class
weights, on-device flips/rotations.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = "../shared/data/pbc96"
  config.data.image_size = 64
  config.model.variant = "atto"
  config.model.depths = (1, 1, 3, 1)
  config.model.dims = (32, 64, 128, 256)
  config.model.drop_path_rate = 0.05
  config.optim.learning_rate = 5e-4
  config.optim.weight_decay = 0.05
  config.train.batch_size = 64
  config.train.num_epochs = 25
  return config
