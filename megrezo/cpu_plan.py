"""Which arithmetic each part of the model runs in on this CPU: looked up once, from what the CPU can do.

bfloat16 weights halve the bytes a decode step reads, and decoding one token is held back by memory, so the
language model keeps its weights in bfloat16 on every CPU. Multiplying in bfloat16 is another matter: only CPUs with
bfloat16 dot-product instructions (AVX512-BF16, AMX) do it natively. Elsewhere torch emulates it, and a large matrix
product (a prompt's prefill, the vision tower, the audio encoder) runs several times slower than in float32, while a
matrix-vector product (one decode step) still waits on memory more than on arithmetic. oneDNN's reordered bfloat16
kernel (cpu_kernels.PackedBf16Linear) refuses CPUs without AVX-512 BW/VL/DQ, and is slow for decoding where AVX-512
has no bfloat16 instructions. So:

- `avx512_bf16` (AVX512-BF16 or AMX-BF16): everything in bfloat16; the language model's layers reordered for oneDNN.
- `avx512`, `avx2` and `generic` (any other CPU, ARM included): decode multiplies in bfloat16 with torch's own
  kernel; prefill and both encoders multiply in float32, from bfloat16 weights converted as each layer
  runs (so memory stays that of bfloat16 weights).

`MEGREZO_CPU_CLASS` (one of CPU_CLASSES) forces a class, so that every path can be tested on one machine; a class
whose instructions the CPU lacks is refused by name. bench/README.md has the measurements behind these choices.
"""

import dataclasses
import os
import platform
from dataclasses import dataclass
from functools import cache

import torch

CPU_CLASSES = ("avx512_bf16", "avx512", "avx2", "generic")
FORCE_VARIABLE = "MEGREZO_CPU_CLASS"
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""Instructions that multiply bfloat16 natively (as /proc/cpuinfo names them)."""
AVX512_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})

PACKED = "onednn_packed"
"""Weight reordered once into oneDNN's blocked layout (cpu_kernels.PackedBf16Linear)."""
TORCH = "torch"
"""torch's own kernel on the weight as stored."""
FROM_BF16 = "fp32_from_bf16"
"""bfloat16 weight converted to float32 into a reused buffer during the call (cpu_kernels.Bf16WeightLinear)."""


@dataclass(frozen=True)
class CpuFacts:
    """What the decision reads: the architecture, the CPU's feature flags, and whether torch's oneDNN accepts
    bfloat16 here (the check its reordered bfloat16 kernel makes before refusing)."""

    machine: str
    flags: frozenset[str]
    onednn_bf16: bool

    @property
    def is_x86(self) -> bool:
        return self.machine.lower() in ("x86_64", "amd64", "i386", "i686")

    def vector_flags(self) -> list[str]:
        """The flags that matter here (vector and matrix instructions), for reports beside measured figures."""
        return sorted(flag for flag in self.flags
                      if flag.startswith(("avx", "amx", "sve", "asimd")) or flag in ("fma", "f16c", "bf16", "i8mm"))


@dataclass(frozen=True)
class PartChoice:
    """How one part multiplies: in `compute_dtype`, with `kernel` (PACKED, TORCH or FROM_BF16)."""

    compute_dtype: torch.dtype
    kernel: str

    def __str__(self) -> str:
        return f"{str(self.compute_dtype).removeprefix('torch.')} ({self.kernel})"


@dataclass(frozen=True)
class CpuPlan:
    """The choice per part. Language-model inputs of up to `decode_max_rows` rows (decode, small batches) take
    `llm_decode`; longer ones (a prompt) take `llm_prefill`."""

    cpu_class: str
    vision: PartChoice
    audio: PartChoice
    llm_prefill: PartChoice
    llm_decode: PartChoice
    forced: bool = False
    decode_max_rows: int = 16

    @property
    def native_bf16(self) -> bool:
        return self.cpu_class == "avx512_bf16"

    def describe(self) -> str:
        source = f"forced by {FORCE_VARIABLE}" if self.forced else "detected"
        return (f"CPU class {self.cpu_class} ({source}): vision {self.vision}, audio {self.audio}, "
                f"LLM prefill {self.llm_prefill}, LLM decode {self.llm_decode}")

    def as_dict(self) -> dict[str, str | bool | int]:
        return {field.name: str(value) if isinstance(value, PartChoice) else value
                for field in dataclasses.fields(self) for value in [getattr(self, field.name)]}


def cpuinfo_flags() -> frozenset[str]:
    """The flags of the first processor in /proc/cpuinfo (Linux), or of `Features` on ARM; empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def torch_flags() -> frozenset[str]:
    """The same facts from torch's own CPU probe, for systems without /proc/cpuinfo (its names, mapped to
    /proc/cpuinfo's)."""
    probes = {"avx2": "_is_avx2_supported", "avx512f": "_is_avx512_supported",
              "avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported"}
    return frozenset(flag for flag, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)())


@cache
def detect_cpu() -> CpuFacts:
    """This machine's facts (read once per process)."""
    onednn_bf16 = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return CpuFacts(machine=platform.machine(), flags=cpuinfo_flags() | torch_flags(), onednn_bf16=onednn_bf16)


def classify(facts: CpuFacts) -> str:
    """The CPU class of `facts` (one of CPU_CLASSES)."""
    if not facts.is_x86:
        return "generic"
    if facts.onednn_bf16 and facts.flags & NATIVE_BF16_FLAGS:
        return "avx512_bf16"
    if AVX512_FLAGS <= facts.flags:
        return "avx512"
    return "avx2" if "avx2" in facts.flags else "generic"


def missing_for(cpu_class: str, facts: CpuFacts) -> list[str]:
    """What `facts` lacks to run `cpu_class`'s choices (empty: it can run them)."""
    if cpu_class == "avx512_bf16":
        missing = [] if facts.flags & NATIVE_BF16_FLAGS else ["avx512_bf16 or amx_bf16"]
        return missing + ([] if facts.onednn_bf16 else ["oneDNN bfloat16 support"])
    return []


def choose_plan(cpu_class: str, compute: str = "fastest", forced: bool = False) -> CpuPlan:
    """The plan for a CPU class. `compute="fastest"` takes the faster arithmetic per part; `"bfloat16"` multiplies
    everything in bfloat16 (what `dtype=torch.bfloat16` asks for), emulated where the CPU has no bfloat16
    instructions."""
    if cpu_class not in CPU_CLASSES:
        raise ValueError(f"unknown CPU class {cpu_class!r}: choose one of {', '.join(CPU_CLASSES)}")
    if compute not in ("fastest", "bfloat16"):
        raise ValueError(f"unknown compute choice {compute!r}: choose fastest or bfloat16")
    bf16 = PartChoice(torch.bfloat16, TORCH)
    if cpu_class == "avx512_bf16":
        packed = PartChoice(torch.bfloat16, PACKED)
        return CpuPlan(cpu_class, vision=bf16, audio=bf16, llm_prefill=packed, llm_decode=packed, forced=forced)
    if compute == "bfloat16":
        return CpuPlan(cpu_class, vision=bf16, audio=bf16, llm_prefill=bf16, llm_decode=bf16, forced=forced)
    fp32 = PartChoice(torch.float32, FROM_BF16)
    return CpuPlan(cpu_class, vision=fp32, audio=fp32, llm_prefill=fp32, llm_decode=bf16, forced=forced)


def cpu_plan(compute: str = "fastest") -> CpuPlan:
    """The plan for this machine, or for the class named by the environment variable MEGREZO_CPU_CLASS."""
    forced = os.environ.get(FORCE_VARIABLE, "").strip()
    facts = detect_cpu()
    if not forced:
        return choose_plan(classify(facts), compute)
    if forced not in CPU_CLASSES:
        raise ValueError(f"{FORCE_VARIABLE}={forced!r}: choose one of {', '.join(CPU_CLASSES)}")
    missing = missing_for(forced, facts)
    if missing:
        raise ValueError(f"{FORCE_VARIABLE}={forced} needs {' and '.join(missing)}, which this CPU lacks")
    return choose_plan(forced, compute, forced=True)
