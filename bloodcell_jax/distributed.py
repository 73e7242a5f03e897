"""Devices and hosts: the pmap axis, replicated trees, and several hosts through JAX's own runtime
(`jax.distributed`, one process per host).

Started when `config.distributed` is True or JAX_COORDINATOR_ADDRESS is set. With explicit
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID the values are passed on; otherwise
JAX detects the cluster itself (TPU pods, SLURM, Open MPI). On CPUs, cross-process collectives
use gloo. Each process feeds its own slice of every global batch to its local devices; pmap's
collectives then span all devices of all processes.
"""

import os

import jax
import numpy as np
from jax.experimental import multihost_utils

# The name of the device axis the steps are pmapped over; collectives (gradient sums, BatchNorm's
# batch statistics) reduce over it.
AXIS = "batch"


def sum_over_devices(tree):
  """`lax.psum` over AXIS (call under pmap); on one device the tree itself.

  XLA keeps a one-device all-reduce: a copy of every gradient each step (0.8% of a ConvNeXt-T CPU
  train step)."""
  return jax.lax.psum(tree, AXIS) if jax.lax.axis_size(AXIS) > 1 else tree


def requested(config) -> bool:
  return bool(config.distributed) or "JAX_COORDINATOR_ADDRESS" in os.environ


def initialize(config) -> None:
  """Joins the cluster; must run before anything asks JAX for its devices."""
  if not requested(config):
    return
  if os.environ.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if "JAX_COORDINATOR_ADDRESS" in os.environ:
    kwargs = {"coordinator_address": os.environ["JAX_COORDINATOR_ADDRESS"],
              "num_processes": int(os.environ["JAX_NUM_PROCESSES"]),
              "process_id": int(os.environ["JAX_PROCESS_ID"])}
  jax.distributed.initialize(**kwargs)


def is_primary() -> bool:
  """Only process 0 writes logs, metrics and run files (Orbax coordinates checkpoints itself)."""
  return jax.process_index() == 0


def gather_examples(local: np.ndarray) -> np.ndarray:
  """Concatenates each process's slice of a batch, in process order, into the global batch.

  `local` has the local device layout (local_devices, per_device, ...).
  """
  local = np.asarray(local).reshape((-1,) + np.shape(local)[2:])
  if jax.process_count() == 1:
    return local
  gathered = multihost_utils.process_allgather(local)  # (processes, local examples, ...)
  return gathered.reshape((-1,) + gathered.shape[2:])


def any_process(flag: bool) -> bool:
  """True if `flag` is True on any process (every process must call this at the same point)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


def unreplicate(tree):
  """The first device's copy of a pmap-replicated pytree, leading device axis removed.

  (flax.jax_utils.unreplicate keeps that axis when pmap runs on a subset of the local devices.)
  """
  return jax.tree.map(lambda x: x.addressable_shards[0].data[0], tree)
