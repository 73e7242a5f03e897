"""A run's config: the defaults (defaults.py) and the rules that resolve, check and read it (rules.py)."""

from bloodcell_jax.config.defaults import get_config
from bloodcell_jax.config.rules import (CONFIG_FILE, architecture_signature, check_batch_size, keeps_weight_average,
                                        load_run_config, resolve, resolve_tta, served_weights, step_config, upgrade,
                                        validate)

__all__ = ["CONFIG_FILE", "architecture_signature", "check_batch_size", "get_config", "keeps_weight_average",
           "load_run_config", "resolve", "resolve_tta", "served_weights", "step_config", "upgrade", "validate"]
