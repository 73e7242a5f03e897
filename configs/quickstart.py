"""Quickstart: a small ConvNeXt on the bundled 320-image sample; under a minute on 2 CPU cores.

It shows the whole pipeline (loading, class weights, Lion, pmap, metrics, checkpoints), not a
useful model: 256 training images are far too few.

Result (2026-11-27, 2-core AMD EPYC VM, CPU only, JAX 0.10.2): validation accuracy 0.625 on the 64
held-out images after 15 epochs (macro AUC 0.933), 39 seconds for the whole command.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = "sample"
  config.data.augment = "dihedral"  # the measured result below used flips/rotations only
  config.data.image_size = 64
  config.model.variant = "atto"
  config.model.depths = (1, 1, 2, 1)
  config.model.dims = (32, 64, 128, 256)
  config.optim.learning_rate = 5e-4
  config.train.batch_size = 32
  config.train.num_epochs = 15
  return config
