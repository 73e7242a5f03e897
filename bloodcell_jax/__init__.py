"""bloodcell_jax: train and serve blood-cell image classifiers with JAX and Flax."""

from bloodcell_jax import platform_setup as _platform_setup

# Must run before JAX is first imported: picks the CPU backend quietly when the CUDA
# plugin is installed (requirements.txt asks for jax[cuda12]) but no NVIDIA driver exists.
_platform_setup.select_backend()
