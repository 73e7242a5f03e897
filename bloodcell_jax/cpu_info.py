"""What the host CPU is and what it can compute at most, for benchmark tables and CPU MFU.

Speed figures only compare on the same CPU family, so every benchmark prints the vendor, family and
model, the cores this process may use and the vector extensions it relied on. The peak is an
estimate from the data sheets' per-cycle throughput, never a measurement:

  peak FLOP/s = physical cores x clock x FLOPs per cycle per core

with the clock from the model name ("@ 2.10GHz") or else /proc/cpuinfo's "cpu MHz", the physical
cores as the usable logical CPUs divided by the threads per core (a 2-vCPU VM is often one core with
two hyperthreads), and FLOPs per cycle from the widest fused multiply-add the core executes at full
rate: two FMA pipes of 512 bits on Intel AVX-512 server cores (64 float32 FLOPs), of 256 bits on
AVX2 cores and on Zen 4, whose AVX-512 is double-pumped 256-bit (32), two of 128 bits on Zen 1 (16).
bfloat16 doubles float32 with AVX512_BF16's pair dot products, and AMX gives 1,024 per cycle.
"""

import dataclasses
import os
import re

_VECTOR_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16")


@dataclasses.dataclass(frozen=True)
class CpuInfo:
  vendor: str  # GenuineIntel, AuthenticAMD, ...
  model_name: str
  family: int
  model: int
  logical_cpus: int  # usable by this process
  threads_per_core: int
  ghz: float | None
  flags: frozenset

  @property
  def cores(self) -> int:
    return max(1, self.logical_cpus // self.threads_per_core)

  @property
  def vector_extensions(self) -> list[str]:
    return [f for f in _VECTOR_FLAGS if f in self.flags]

  def flops_per_cycle(self, dtype: str) -> int:
    """Per core, at full rate (see the module docstring)."""
    if dtype == "bfloat16" and "amx_bf16" in self.flags:
      return 1024
    if "avx512f" in self.flags and self.vendor == "GenuineIntel":
      fp32 = 64
    elif "fma" in self.flags:
      zen1 = self.vendor == "AuthenticAMD" and self.family == 23 and self.model < 0x30
      fp32 = 16 if zen1 else 32
    elif "avx" in self.flags:
      fp32 = 16
    else:
      fp32 = 8
    return 2 * fp32 if dtype == "bfloat16" and "avx512_bf16" in self.flags else fp32

  def peak_flops(self, dtype: str) -> float | None:
    if not self.ghz or dtype not in ("float32", "bfloat16"):
      return None
    return self.cores * self.ghz * 1e9 * self.flops_per_cycle(dtype)

  def describe(self) -> str:
    family = f"family {self.family} model {self.model}" if self.family else "family unknown"
    clock = f"{self.ghz:.2f} GHz" if self.ghz else "clock unknown"
    return (f"{self.model_name} ({self.vendor}, {family}), {self.logical_cpus} logical CPUs = {self.cores} cores x "
            f"{self.threads_per_core} threads, {clock}, {' '.join(self.vector_extensions) or 'no AVX'}")

  def describe_peak(self, dtype: str) -> str:
    peak = self.peak_flops(dtype)
    if peak is None:
      return f"peak {dtype} FLOP/s unknown (no clock in /proc/cpuinfo)"
    return (f"peak {dtype} estimate {peak / 1e9:.0f} GFLOP/s = {self.cores} cores x {self.ghz:.2f} GHz x "
            f"{self.flops_per_cycle(dtype)} FLOPs/cycle")


def parse(cpuinfo: str, logical_cpus: int) -> CpuInfo:
  """From the text of /proc/cpuinfo (its first processor) and the CPUs this process may use."""
  first = cpuinfo.split("\n\n")[0]
  fields = {}
  for line in first.splitlines():
    key, _, value = line.partition(":")
    fields.setdefault(key.strip(), value.strip())
  name = fields.get("model name", "unknown CPU")
  clock = re.search(r"@\s*([\d.]+)\s*GHz", name)
  ghz = float(clock.group(1)) if clock else None
  if ghz is None and fields.get("cpu MHz"):
    ghz = float(fields["cpu MHz"]) / 1000
  siblings, cores = int(fields.get("siblings", 0) or 0), int(fields.get("cpu cores", 0) or 0)
  return CpuInfo(vendor=fields.get("vendor_id", "unknown"), model_name=name, family=int(fields.get("cpu family", 0)),
                 model=int(fields.get("model", 0)), logical_cpus=logical_cpus,
                 threads_per_core=max(1, siblings // cores) if siblings and cores else 1, ghz=ghz,
                 flags=frozenset(fields.get("flags", "").split()))


def host() -> CpuInfo | None:
  """This machine's CPU, or None where /proc/cpuinfo is not there (not Linux)."""
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read()
  except OSError:
    return None
  usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
  return parse(text, usable)
