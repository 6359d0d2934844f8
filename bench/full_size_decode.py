"""Decode speed as bench/full_size.py reports it for every backend: tokens/s beside the memory bandwidth measured in
the same process, as a fraction of the roofline."""

import statistics
import time
from collections.abc import Callable

from full_size_inputs import TEXT_TOKENS
from measuring import MemoryWatch, bandwidth_gb_s, roofline_tokens_per_s, timed


def roofline(config, batch: int, new_tokens: int, tokens_per_s: float, bandwidth: float, **byte_sizes) -> dict:
    """Decode figures against the roofline: the step reads weights plus the KV cache of the average context."""
    from megrezo.decode_bytes import decode_step_bytes

    step = decode_step_bytes(config, batch=batch, context=TEXT_TOKENS + new_tokens // 2, **byte_sizes)
    roof = roofline_tokens_per_s(bandwidth, step.total, batch)
    return {"batch": batch, "new_tokens": new_tokens, "tokens_per_s": tokens_per_s,
            "bandwidth_gb_s": bandwidth, "bytes_per_step": step.total,
            "roofline_tokens_per_s": roof, "roofline_fraction": tokens_per_s / roof}


def measure_decode(generate: Callable[[int, int], float | None], config, watch: MemoryWatch, device: str,
                   batch: int, new_tokens: int, repeats: int, **byte_sizes) -> dict:
    """Decode tokens/s of `generate(batch, n)`, which makes exactly n tokens per sequence and returns the seconds
    from the first to the last of them, or None: then the time to generate 1 token is subtracted. The best of
    `repeats` rounds, with the bandwidth measured before and after (outside the memory figures)."""
    with watch.excluded():
        bandwidths = [bandwidth_gb_s(device)]
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        decode_s = generate(batch, new_tokens)
        if decode_s is None:  # the backend reports no step times: subtract the time to the first token
            decode_s = time.perf_counter() - start - timed(lambda: generate(batch, 1), device)
        rates.append(batch * (new_tokens - 1) / decode_s if decode_s > 0 else float("nan"))
    with watch.excluded():
        bandwidths.append(bandwidth_gb_s(device))
    result = roofline(config, batch, new_tokens, max(rates), statistics.mean(bandwidths), **byte_sizes)
    result["rounds_tokens_per_s"] = rates
    result["bandwidths_gb_s"] = bandwidths
    return result
