"""Compiled decoding: transformers' static KV cache with the LLM's one-token step compiled by `torch.compile`.

A decode step reads every weight once but does little arithmetic per weight; on a GPU, launching its few hundred
small kernels one by one from Python takes longer than running them. transformers' answer, which this module uses
as documented, is a `StaticCache` (key/value tensors of a fixed length, written in place) together with a
`CompileConfig`: `generate` then runs the prompt (the prefill, where MegrezO's images and audio enter) eagerly and
every later step through `torch.compile(llm.__call__)`, on a GPU with CUDA graphs (mode "reduce-overhead").

Two details keep that from recompiling or re-recording per request:
- The step is compiled for dynamic shapes, and the cache length is rounded up to a power of two (at least 256, at
  most the model's positions): one graph serves batch 1 and one every larger batch, whatever the lengths, and CUDA
  graphs are recorded for a few cache lengths only.
- The caches are kept and reset between requests instead of allocated anew: CUDA graphs read the cache at the
  address they were recorded with, and a new address makes them record again.
Requests that decode this way run one at a time in a process (they share the kept caches); batch conversations
for throughput.
"""

import threading
from collections import OrderedDict

import torch
import transformers

SHORTEST_CACHE = 256
KEPT_CACHES = 4
"""Caches kept for reuse, one per (batch size, length, dtype, device), the least recently used dropped first."""


def static_cache_length(needed: int, positions: int) -> int:
    """The smallest power of two >= `needed` and >= SHORTEST_CACHE, but no more than the model's `positions` (or
    exactly `needed` beyond them, where generation fails on its own terms)."""
    length = max(SHORTEST_CACHE, 1 << (needed - 1).bit_length())
    return needed if needed > positions else min(length, positions)


def compile_config(device: torch.device) -> "transformers.CompileConfig":
    """Shapes compiled as dynamic, as transformers' example for static caches does, so that one graph serves every
    batch size above 1 and every cache length (torch always specialises a dimension of size 1: batch 1 gets a graph
    of its own). On CUDA transformers' default mode, "reduce-overhead" (CUDA graphs); elsewhere inductor's default
    mode, which transformers only compiles with when asked to compile on every device."""
    from transformers import CompileConfig

    if device.type == "cuda":
        return CompileConfig(dynamic=True)
    config = CompileConfig(dynamic=True, mode="default")
    config._compile_all_devices = True
    return config


class StaticCachePool:
    """Static caches kept between requests (see the module's docstring). `lock` must be held from `take` until the
    request's generation ends."""

    lock = threading.Lock()

    def __init__(self) -> None:
        self._caches: OrderedDict[tuple, transformers.Cache] = OrderedDict()

    def take(self, config: "transformers.PretrainedConfig", batch: int, length: int, dtype: torch.dtype,
             device: torch.device) -> "transformers.StaticCache":
        """An empty cache of that shape: the kept one, reset, or a new one (allocated by its first forward).
        transformers' imports are made here: older versions, which the eager path still serves, lack them."""
        if int(transformers.__version__.split(".")[0]) < 5:
            raise ValueError(f"compile=True needs transformers 5 or newer, this is {transformers.__version__}")
        from transformers import StaticCache

        key = (batch, length, dtype, str(device))
        cache = self._caches.pop(key, None)
        if cache is None:
            cache = StaticCache(config=config, max_cache_len=length)
        else:
            cache.reset()
        self._caches[key] = cache
        while len(self._caches) > KEPT_CACHES:
            self._caches.popitem(last=False)
        return cache
