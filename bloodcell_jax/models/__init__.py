"""Classifier backbones and the registry that builds them from a config."""

from bloodcell_jax.models.registry import create_model, model_names

__all__ = ["create_model", "model_names"]
