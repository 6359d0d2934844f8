"""What the benchmarks measure with, shared so that their figures mean the same: clocks that wait for a GPU's queued
work, the memory-bandwidth probe that decode speeds are set against, and the memory a model and a process tree take.
(The CPU's flags come from megrezo.cpu_plan's detection, which chooses the kernels the figures measure.)

torch and the model's modules load inside the functions, so that a benchmark's --help answers at once.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

Result = TypeVar("Result")


def synchronize(device: str | torch.device) -> None:
    """Waits for a GPU's queued work, so that a clock read after it counts that work (nothing on the CPU)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def clock(run: Callable[[], Result], device: str | torch.device = "cpu") -> tuple[float, Result]:
    """(seconds, result) of run(), with the device's queued work done before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = run()
    synchronize(device)
    return time.perf_counter() - start, result


def timed(run: Callable[[], object], device: str | torch.device = "cpu") -> float:
    """Seconds of run(), with the device's queued work done before and after."""
    return clock(run, device)[0]


def best_seconds(run: Callable[[], object], repeats: int, device: str | torch.device = "cpu") -> float:
    """The best of `repeats` timed calls after one untimed call (which pays for first-call setup)."""
    run()
    return min(timed(run, device) for _ in range(repeats))


def bandwidth_gb_s(device: str | torch.device = "cpu", gib: float = 1.0, repeats: int = 5) -> float:
    """Memory read bandwidth in GB/s: the best of `repeats` sums over a float32 tensor of `gib` GiB. On the CPU
    the sums run on a thread per usable core, whatever torch's thread count is at the time: one core alone does not
    reach the memory's bandwidth, and a decode figure is compared with what the whole machine can read. float32,
    because a bfloat16 sum converts every element and is bound by that arithmetic on some CPUs (8 GB/s a core
    against 12 in float32 on a Xeon with AVX512-BF16), which would understate the roofline."""
    import torch

    data = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32, device=device)
    threads = torch.get_num_threads()
    if data.device.type == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    try:
        return data.numel() * 4 / best_seconds(data.sum, repeats, device) / 1e9
    finally:
        torch.set_num_threads(threads)


def roofline_tokens_per_s(bandwidth: float, bytes_per_step: int, batch: int = 1) -> float:
    """The decode speed memory allows: every step reads `bytes_per_step` at `bandwidth` GB/s and yields `batch`
    tokens. A measured speed over this is its roofline fraction."""
    return bandwidth * 1e9 / bytes_per_step * batch


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers; a quantized weight counts its int8 values and scales."""
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        parts = [tensor.qdata, tensor.scale] if hasattr(tensor, "qdata") else [tensor]
        total += sum(part.numel() * part.element_size() for part in parts)
    return total


class MemoryWatch:
    """Peak resident memory of this process and its children, sampled in a background thread. Besides the whole
    resident set it tracks its anonymous part (resident minus file-backed pages): transformers memory-maps the
    checkpoint, so pages of weights that were read once and then replaced by a reordered or quantized copy stay
    counted as resident, although the kernel can drop them (they are clean pages of the file)."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self._process = psutil.Process()
        self._interval, self._peak, self._peak_anon, self._stop = interval, 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> tuple[int, int]:
        """(resident bytes, anonymous resident bytes) of the process tree now."""
        total = anon = 0
        for process in [self._process, *self._process.children(recursive=True)]:
            try:
                info = process.memory_info()
            except Exception:  # a child that just ended
                continue
            total += info.rss
            anon += info.rss - info.shared
        return total, anon

    def current(self) -> int:
        return self.sample()[0]

    def _run(self) -> None:
        while not self._stop.is_set():
            total, anon = self.sample()
            self._peak, self._peak_anon = max(self._peak, total), max(self._peak_anon, anon)
            time.sleep(self._interval)

    def reset(self) -> None:
        self._peak, self._peak_anon = self.sample()

    def peak(self) -> int:
        return max(self._peak, self.current())

    def peak_anon(self) -> int:
        return max(self._peak_anon, self.sample()[1])

    @contextmanager
    def excluded(self):
        """Memory used inside the block (the bandwidth probe's tensor) does not count towards the peak."""
        before = self.peak(), self.peak_anon()
        self._stop.set()
        self._thread.join()
        try:
            yield
        finally:
            (self._peak, self._peak_anon), self._stop = before, threading.Event()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
