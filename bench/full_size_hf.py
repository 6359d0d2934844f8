"""The parts `hf-bf16` and `hf-int8` of bench/full_size.py: transformers in bfloat16, and with the LLM quantized to
int8 at load. They share loading and every measurement; the int8 part adds the logits' distance from the bfloat16
part's (saved in the run's scratch folder) and a decode race beside a bfloat16 model in its own process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from full_size_decode import measure_decode
from full_size_inputs import decode_prompt, requests
from measuring import MemoryWatch, bandwidth_gb_s, synchronize, timed, weight_bytes

if TYPE_CHECKING:
    import torch

LOGIT_TOKENS = 256


def stage_hooks(model, device: str) -> tuple[dict, list]:
    """Forward hooks that add each call's seconds of the vision tower, the audio encoder and the first LLM forward
    (the prefill) to a dict."""
    times: dict[str, float] = {}
    handles = []
    for name, module in (("vision_s", model.vision), ("audio_encoder_s", model.audio), ("llm_prefill_s", model.llm)):
        started = {}

        def before(module, args, kwargs, started=started):
            synchronize(device)
            started["t"] = time.perf_counter()

        def after(module, args, kwargs, output, name=name, started=started):
            synchronize(device)
            if name != "llm_prefill_s" or name not in times:
                times[name] = times.get(name, 0.0) + time.perf_counter() - started["t"]

        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(module.register_forward_hook(after, with_kwargs=True))
    return times, handles


def request_stages(model, processor, conversation: list[dict], device: str) -> dict:
    """Preprocessing, encoder and prefill seconds of one request, and its first-token latency (preprocessing
    through the first generated token)."""
    import torch

    times, handles = stage_hooks(model, device)
    start = time.perf_counter()
    batch = processor([conversation], add_generation_prompt=True)
    preprocess = time.perf_counter() - start

    def to_model(value):
        if isinstance(value, dict):
            return {key: to_model(item) for key, item in value.items()}
        if isinstance(value, torch.Tensor):
            return value.to(device, model.dtype if value.is_floating_point() else value.dtype)
        return value

    batch = to_model(batch)
    model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   image_encoding=batch.get("image_encoding"), audio_encoding=batch.get("audio_encoding"),
                   max_new_tokens=1, do_sample=False, pad_token_id=model.config.pad_token_id)
    synchronize(device)
    first_token = time.perf_counter() - start
    for handle in handles:
        handle.remove()
    return {"prompt_tokens": int(batch["input_ids"].shape[1]), "preprocess_s": preprocess, **times,
            "first_token_s": first_token}


def step_clocked_generate(model, device: str):
    """generate(batch, n) for measure_decode: the step clock (a logits processor, called once per new token after
    its forward pass) times the n - 1 decode steps apart from the prefill."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class StepClock(LogitsProcessor):
        def __init__(self):
            self.times: list[float] = []

        def __call__(self, input_ids, scores):
            synchronize(device)
            self.times.append(time.perf_counter())
            return scores

    def generate(batch: int, new_tokens: int) -> float | None:
        ids = torch.tensor(decode_prompt(model.config.vocab_size, batch), device=device)
        clock = StepClock()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=model.config.pad_token_id,
                       logits_processor=LogitsProcessorList([clock]))
        return clock.times[-1] - clock.times[0] if len(clock.times) > 1 else None

    return generate


def teacher_forced_logits(model, device: str) -> torch.Tensor:
    import torch

    ids = torch.tensor(np.random.default_rng(2).integers(300, min(model.config.vocab_size, 30000), (1, LOGIT_TOKENS)),
                       device=device)
    with torch.inference_mode():
        return model(data={"input_ids": ids}).logits[0].float()


def linear_layers_only(model, watch: MemoryWatch, repeats: int = 3) -> dict:
    """Every linear layer of the LLM called once on one input row, in order, with nothing else: the part of a
    decode step that the matrix kernels take, as GB/s of the weights they read, beside a bandwidth probe. Timed
    with all threads and with one: a kernel held back by memory gains little from a second thread, one held back by
    its arithmetic nearly doubles."""
    import torch

    from megrezo.decode_bytes import decode_step_bytes

    layers = [m for name, m in model.llm.named_modules() if name and not list(m.children())
              and hasattr(m, "in_features")]
    rows = {m.in_features: torch.randn(1, m.in_features, dtype=torch.bfloat16) for m in layers}
    threads = torch.get_num_threads()
    seconds = {}
    with torch.inference_mode():
        for count in sorted({1, threads}, reverse=True):
            torch.set_num_threads(count)
            seconds[count] = min(timed(lambda: [m(rows[m.in_features]) for m in layers]) for _ in range(repeats))
    torch.set_num_threads(threads)
    with watch.excluded():
        bandwidth = bandwidth_gb_s()
    quantized = type(layers[0]).__name__ == "Int8WeightLinear"
    sizes = {"bytes_per_weight": 1, "bytes_per_row_scale": 2} if quantized else {}
    weights = decode_step_bytes(model.config, **sizes).weight_bytes
    best = seconds[threads]
    return {"layers": len(layers), "seconds": best, "gb_s": weights / best / 1e9, "bandwidth_gb_s": bandwidth,
            "fraction_of_bandwidth": weights / best / 1e9 / bandwidth,
            "gb_s_one_thread": weights / seconds[1] / 1e9, "speedup_all_threads_over_one": seconds[1] / best}


def part_hf(model_path: Path, quant: str | None, args, watch: MemoryWatch, scratch: Path) -> dict:
    """`hf-bf16` (quant None) or `hf-int8` (quant "int8") on args.device."""
    import torch
    from transformers import AutoModelForCausalLM

    from megrezo.quantization import llm_quantization_config

    device = args.device
    extra = {"quantization_config": llm_quantization_config(quant)} if quant else {}
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=True, dtype=torch.bfloat16, **extra)
    model.to(device).eval()
    synchronize(device)
    result = {"load_s": time.perf_counter() - start, "weight_bytes": weight_bytes(model),
              "rss_after_load_bytes": watch.current(), "peak_rss_load_bytes": watch.peak()}
    config = model.config
    generate = step_clocked_generate(model, device)
    kernel_bytes = {"bytes_per_weight": 1, "bytes_per_row_scale": 2} if quant else {}
    if device == "cpu":
        eager_bytes = {"bytes_per_weight": 1, "bytes_per_row_scale": 4} if quant else {}
        eager_tokens = max(4, args.new_tokens // 4) if quant else args.new_tokens
        result["decode_eager"] = [measure_decode(generate, config, watch, device, 1, eager_tokens, 1, **eager_bytes)]
        result["cpu_kernels_s"] = timed(lambda: result.setdefault("cpu_kernels", model.use_cpu_kernels()))
        result["cpu_plan"] = model.cpu_plan.as_dict()
    watch.reset()
    with torch.inference_mode():
        if not quant:
            processor = model.chat_processor()
            result["requests"] = {name: request_stages(model, processor, conversation, device)
                                  for name, conversation in requests(processor.tokenizer).items()}
        result["decode"] = [measure_decode(generate, config, watch, device, batch, args.new_tokens, repeats,
                                           **kernel_bytes)
                            for batch, repeats in ((1, args.repeats), (8, 1))]
        result["peak_rss_generate_bytes"] = watch.peak()
        result["peak_rss_anon_generate_bytes"] = watch.peak_anon()
        if device != "cpu":
            result["peak_gpu_allocated_bytes"] = torch.cuda.max_memory_allocated()
            return result
        result["linear_layers_only"] = linear_layers_only(model, watch)
        logits = teacher_forced_logits(model, device)
    reference = scratch / "bf16_logits.pt"
    if not quant:
        torch.save(logits, reference)
    elif reference.exists():
        bf16 = torch.load(reference)
        result["logits_vs_bf16"] = {"tokens": LOGIT_TOKENS,
                                    "relative_l2": float((logits - bf16).norm() / bf16.norm()),
                                    "top1_agreement": float((logits.argmax(-1) == bf16.argmax(-1)).float().mean())}
    if quant:
        result["beside_bf16"] = decode_beside_bf16(model, model_path, args)
    return result


def decode_beside_bf16(quantized, model_path: Path, args) -> dict:
    """Batch-1 decode of the quantized model and of the bfloat16 one (both with the CPU kernels), loaded side by side
    in this process and timed in alternating rounds, so that both meet the same memory bandwidth: this machine's
    bandwidth drifts by tens of percent between minutes, which makes a ratio of figures from two processes unreliable."""
    import torch

    from megrezo.loading import load_chat_model

    bf16 = load_chat_model(model_path, "cpu", "auto")
    generators = {"quantized": step_clocked_generate(quantized, "cpu"), "bf16": step_clocked_generate(bf16, "cpu")}
    rates: dict[str, list[float]] = {name: [] for name in generators}
    with torch.inference_mode():
        for _ in range(args.repeats + 1):
            for name, generate in generators.items():
                rates[name].append((args.new_tokens - 1) / generate(1, args.new_tokens))
    best = {name: max(values) for name, values in rates.items()}
    return {"new_tokens": args.new_tokens, "rounds_tokens_per_s": rates, "quantized_tokens_per_s": best["quantized"],
            "bf16_tokens_per_s": best["bf16"], "speedup": best["quantized"] / best["bf16"]}
