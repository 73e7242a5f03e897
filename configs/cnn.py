"""The report's baseline CNN (two conv + ReLU + max-pool layers, dense 128, softmax) on pbc96.

96x96 inputs, Lion like the other configs, balanced class weights, on-device
flips/rotations. Small enough to train on a laptop CPU.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = "../shared/data/pbc96"
  config.data.image_size = 96
  config.model.name = "cnn"
  config.model.head_dropout = 0.5
  config.optim.learning_rate = 3e-4
  config.optim.weight_decay = 0.01
  config.train.batch_size = 64
  config.train.num_epochs = 12
  return config
