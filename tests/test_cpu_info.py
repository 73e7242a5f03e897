"""The host CPU's description and peak FLOP/s estimate, on /proc/cpuinfo texts of the families we met."""

import pytest

from bloodcell_jax import cpu_info


def _cpuinfo(vendor, name, family, model, flags, mhz="2000.000", siblings=2, cores=1):
  return (f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\nmodel name\t: {name}\n"
          f"cpu MHz\t\t: {mhz}\nsiblings\t: {siblings}\ncpu cores\t: {cores}\nflags\t\t: {flags}\n\n"
          "processor\t: 1\nvendor_id\t: ignored\n")


SAPPHIRE_RAPIDS = _cpuinfo("GenuineIntel", "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", 6, 143,
                           "fpu sse2 avx avx2 fma avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile")
ZEN1 = _cpuinfo("AuthenticAMD", "AMD EPYC 7551P 32-Core Processor", 23, 1, "fpu sse2 avx avx2 fma", mhz="2000.000",
                siblings=2, cores=2)
ZEN4 = _cpuinfo("AuthenticAMD", "AMD EPYC", 25, 17, "fpu avx avx2 fma avx512f avx512_bf16", mhz="2600.000")


@pytest.mark.parametrize("text, cores, fp32, bf16, extensions", [
    # 1 core (2 hyperthreads) x 2.7 GHz x 64 (two 512-bit FMA pipes); AMX: 1,024 bf16 FLOPs/cycle
    (SAPPHIRE_RAPIDS, 1, 2.7e9 * 64, 2.7e9 * 1024, "avx avx2 fma avx512f avx512_bf16 avx512_vnni amx_tile amx_bf16"),
    # 2 cores x 2.0 GHz x 16 (two 128-bit FMA pipes); no bf16 instructions
    (ZEN1, 2, 2 * 2.0e9 * 16, 2 * 2.0e9 * 16, "avx avx2 fma"),
    # 1 core x 2.6 GHz x 32 (AVX-512 double-pumped on 256-bit pipes); bf16 pair dot products double it
    (ZEN4, 1, 2.6e9 * 32, 2.6e9 * 64, "avx avx2 fma avx512f avx512_bf16"),
])
def test_peak_estimate_by_hand(text, cores, fp32, bf16, extensions):
  cpu = cpu_info.parse(text, logical_cpus=2)
  assert cpu.cores == cores
  assert cpu.peak_flops("float32") == pytest.approx(fp32)
  assert cpu.peak_flops("bfloat16") == pytest.approx(bf16)
  assert " ".join(cpu.vector_extensions) == extensions
  assert f"family {cpu.family} model {cpu.model}" in cpu.describe()
  assert f"{cpu.flops_per_cycle('float32')} FLOPs/cycle" in cpu.describe_peak("float32")


def test_unknown_clock_gives_no_peak_and_this_host_parses():
  cpu = cpu_info.parse(_cpuinfo("AuthenticAMD", "AMD EPYC", 25, 1, "avx2 fma", mhz=""), logical_cpus=2)
  assert cpu.peak_flops("float32") is None and "unknown" in cpu.describe_peak("float32")
  host = cpu_info.host()
  if host is not None:  # Linux
    assert host.logical_cpus >= 1 and host.model_name
