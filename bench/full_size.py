"""Megrez-3B-Omni at the release's dimensions on a CPU: load, memory, time per stage, decode against the memory
roofline, weight-only int8, vLLM's CPU backend and one LoRA step, in one run.

    python bench/full_size.py                          # every part, random weights of the release's dimensions
    python bench/full_size.py --parts hf-bf16 lora     # some parts only
    python bench/full_size.py --size small             # the same at small size, a quick check of the script
    python bench/full_size.py --out bench/results      # where the committed figures were written
    python bench/full_size.py --device cuda            # on a GPU: the parts hf-bf16 and lora

Weights are random (megrezo.tiny's `full` size: LLM 2560 wide with 32 layers and a 122,880 vocabulary, SigLIP 1152
wide, Whisper 1280 wide; about 8 GB in bfloat16, made once under ~/.cache/megrezo) unless --model_path names a real
checkpoint. Each part runs in its own process, one after the other, so one model is in memory at a time:

- `hf-bf16`: transformers in bfloat16. Load time and resident memory; the authors' speed-table request (128 text
  tokens + one 720x1480 image) and a 30 s clip, timed per stage (preprocessing, vision tower + resampler, audio
  encoder, LLM prefill) and to the first token; decode tokens/s at batch 1 and 8 with plain `nn.Linear` and then
  with `model.use_cpu_kernels()` (the plan megrezo/cpu_plan.py picks for this CPU, or the class that
  `MEGREZO_CPU_CLASS` forces); teacher-forced logits of 256 tokens, kept for the int8 part to compare.
- `hf-int8`: the LLM quantized at load (`--quant int8`): decode with torchao's eager layers and with the CPU kernels,
  and the logits' distance from bfloat16 on the same 256 tokens (relative L2 and top-1 agreement); then the
  bfloat16 model is loaded beside it and both decode at batch 1 in alternating rounds: the speedup the summary
  reports.
- `vllm-bf16`: vLLM's CPU backend in bfloat16: load time, memory of the engine's processes, first-token latency of
  the same two requests, decode tokens/s at batch 1 and 8.
- `lora`: one LoRA optimizer step on the LLM's attention projections of the bfloat16 model with gradient
  checkpointing, with its peak memory and the bytes of each parameter dtype (the base model stays bfloat16).

With `--device cuda` the parts `hf-bf16` and `lora` run on the GPU (no CPU kernels there; memory is the GPU's peak
allocation besides the resident set) and write full_size_cuda.json.

Every decode figure sits beside the memory bandwidth measured in the same process just before and after it (the
best of several sums over a 1 GiB bfloat16 tensor), and is reported as a fraction of the roofline
`bandwidth / bytes read per step` (megrezo.decode_bytes). Decode tokens/s = batch x (new - 1) / the time from the
first new token to the last: for HF from a clock called at every step, for vLLM as the time for `new` tokens minus
the time for 1. Memory is the resident set of the part's process and its children, sampled every 20 ms.
The report records the CPU's vector flags, its class and the plan each part ran.
Results go to `$MEGREZO_BENCH_RESULTS` or bench/out/ (full_size[_SIZE].json and a chart), or to --out. Parts run
again replace their earlier results in that file; the others are kept (each part records when it was measured).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from output_folder import add_out_argument

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

PARTS = ("hf-bf16", "hf-int8", "vllm-bf16", "lora")
GPU_PARTS = ("hf-bf16", "lora")
DEVICE = "cpu"
"""Where the model and the bandwidth probe run: --device, set once in main()."""
TEXT_TOKENS = 128
IMAGE_SIZE = (720, 1480)
CLIP_SECONDS = 30
LOGIT_TOKENS = 256
GOALS = {"bf16_roofline_fraction": 0.6, "int8_speedup_over_bf16": 1.7, "peak_rss_over_weights": 1.25,
         "int8_logits_relative_error": 0.03}


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

    def peak(self) -> int:
        return max(self._peak, self.current())

    def stop(self) -> None:
        self._stop.set()


def read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Memory read bandwidth of DEVICE in GB/s: the best of `repeats` sums over a bfloat16 tensor of `gib` GiB."""
    import torch

    data = torch.ones(int(gib * 2**30) // 2, dtype=torch.bfloat16, device=DEVICE)
    best = min(timed(data.sum) for _ in range(repeats))
    return data.numel() * 2 / best / 1e9


def synchronize() -> None:
    """Waits for the GPU's queued work, so that a clock read after it counts that work (nothing on the CPU)."""
    if DEVICE != "cpu":
        import torch

        torch.cuda.synchronize()


def timed(fn) -> float:
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def seed_media(folder: Path) -> tuple[object, tuple[np.ndarray, int]]:
    """A photo-like 720x1480 image (gradients plus noise) and 30 s of speech-band noise at 16 kHz."""
    from PIL import Image

    rng = np.random.default_rng(0)
    width, height = IMAGE_SIZE
    gradient = np.linspace(0, 255, width)[None, :, None] * np.linspace(0.3, 1.0, height)[:, None, None]
    pixels = np.clip(gradient + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    audio = rng.uniform(-0.3, 0.3, CLIP_SECONDS * 16000).astype(np.float32)
    return Image.fromarray(pixels), (audio, 16000)


def seed_text(tokenizer, num_tokens: int, seed: int = 0) -> str:
    """Text that tokenizes to `num_tokens` tokens."""
    rng = np.random.default_rng(seed)
    words = rng.choice(["describe", "the", "picture", "colour", "shape", "left", "right", "count", "and", "of"], 400)
    ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"][:num_tokens]
    return tokenizer.decode(ids)


def requests(tokenizer) -> dict[str, list[dict]]:
    """The two timed conversations: 128 text tokens + one 720x1480 image, and a question about a 30 s clip."""
    image, audio = seed_media(Path(tempfile.gettempdir()))
    return {
        "image": [{"role": "user", "content": {"text": seed_text(tokenizer, TEXT_TOKENS), "image": image}}],
        "audio": [{"role": "user", "content": {"text": "What is said in this recording?", "audio": audio}}],
    }


def decode_prompt(vocab: int, batch: int) -> list[list[int]]:
    rng = np.random.default_rng(1)
    return rng.integers(300, min(vocab, 30000), (batch, TEXT_TOKENS)).tolist()


def roofline(config, batch: int, new_tokens: int, tokens_per_s: float, bandwidth: float, **byte_sizes) -> dict:
    """Decode figures against the roofline: the step reads weights plus the KV cache of the average context."""
    from megrezo.decode_bytes import decode_step_bytes

    step = decode_step_bytes(config, batch=batch, context=TEXT_TOKENS + new_tokens // 2, **byte_sizes)
    roof_steps = bandwidth * 1e9 / step.total
    return {"batch": batch, "new_tokens": new_tokens, "tokens_per_s": tokens_per_s,
            "bandwidth_gb_s": bandwidth, "bytes_per_step": step.total,
            "roofline_tokens_per_s": roof_steps * batch, "roofline_fraction": tokens_per_s / batch / roof_steps}


def measure_decode(generate, config, watch: MemoryWatch, batch: int, new_tokens: int, repeats: int,
                   **byte_sizes) -> dict:
    """Decode tokens/s of `generate(batch, n)`, which makes exactly n tokens per sequence and returns the seconds
    from the first to the last of them, or None: then the time to generate 1 token is subtracted. The best of
    `repeats` rounds, with the bandwidth measured before and after (outside the memory figures)."""
    with watch.excluded():
        bandwidths = [read_bandwidth()]
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        decode_s = generate(batch, new_tokens)
        if decode_s is None:  # the backend reports no step times: subtract the time to the first token
            decode_s = time.perf_counter() - start - timed(lambda: generate(batch, 1))
        rates.append(batch * (new_tokens - 1) / decode_s if decode_s > 0 else float("nan"))
    with watch.excluded():
        bandwidths.append(read_bandwidth())
    result = roofline(config, batch, new_tokens, max(rates), statistics.mean(bandwidths), **byte_sizes)
    result["rounds_tokens_per_s"] = rates
    result["bandwidths_gb_s"] = bandwidths
    return result


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
        bandwidth = read_bandwidth()
    quantized = type(layers[0]).__name__ == "Int8WeightLinear"
    sizes = {"bytes_per_weight": 1, "bytes_per_row_scale": 2} if quantized else {}
    weights = decode_step_bytes(model.config, **sizes).weight_bytes
    best = seconds[threads]
    return {"layers": len(layers), "seconds": best, "gb_s": weights / best / 1e9, "bandwidth_gb_s": bandwidth,
            "fraction_of_bandwidth": weights / best / 1e9 / bandwidth,
            "gb_s_one_thread": weights / seconds[1] / 1e9, "speedup_all_threads_over_one": seconds[1] / best}


def weight_bytes(model) -> int:
    """Bytes of the parameters and buffers; a quantized weight counts its int8 values and scales."""
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        parts = [tensor.qdata, tensor.scale] if hasattr(tensor, "qdata") else [tensor]
        total += sum(part.numel() * part.element_size() for part in parts)
    return total


def stage_hooks(model) -> tuple[dict, list]:
    """Forward hooks that add each call's seconds of the vision tower, the audio encoder and the first LLM forward
    (the prefill) to a dict."""
    times: dict[str, float] = {}
    handles = []
    for name, module in (("vision_s", model.vision), ("audio_encoder_s", model.audio), ("llm_prefill_s", model.llm)):
        started = {}

        def before(module, args, kwargs, started=started):
            synchronize()
            started["t"] = time.perf_counter()

        def after(module, args, kwargs, output, name=name, started=started):
            synchronize()
            if name != "llm_prefill_s" or name not in times:
                times[name] = times.get(name, 0.0) + time.perf_counter() - started["t"]

        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(module.register_forward_hook(after, with_kwargs=True))
    return times, handles


def hf_request_stages(model, processor, conversation: list[dict]) -> dict:
    """Preprocessing, encoder and prefill seconds of one request, and its first-token latency (preprocessing
    through the first generated token)."""
    import torch

    times, handles = stage_hooks(model)
    start = time.perf_counter()
    batch = processor([conversation], add_generation_prompt=True)
    preprocess = time.perf_counter() - start

    def to_model(value):
        if isinstance(value, dict):
            return {key: to_model(item) for key, item in value.items()}
        if isinstance(value, torch.Tensor):
            return value.to(DEVICE, model.dtype if value.is_floating_point() else value.dtype)
        return value

    batch = to_model(batch)
    model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   image_encoding=batch.get("image_encoding"), audio_encoding=batch.get("audio_encoding"),
                   max_new_tokens=1, do_sample=False, pad_token_id=model.config.pad_token_id)
    synchronize()
    first_token = time.perf_counter() - start
    for handle in handles:
        handle.remove()
    return {"prompt_tokens": int(batch["input_ids"].shape[1]), "preprocess_s": preprocess, **times,
            "first_token_s": first_token}


def hf_generate(model):
    """generate(batch, n) for measure_decode: the step clock (a logits processor, called once per new token after
    its forward pass) times the n - 1 decode steps apart from the prefill."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class StepClock(LogitsProcessor):
        def __init__(self):
            self.times: list[float] = []

        def __call__(self, input_ids, scores):
            synchronize()
            self.times.append(time.perf_counter())
            return scores

    def generate(batch: int, new_tokens: int) -> float | None:
        ids = torch.tensor(decode_prompt(model.config.vocab_size, batch), device=DEVICE)
        clock = StepClock()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=model.config.pad_token_id,
                       logits_processor=LogitsProcessorList([clock]))
        return clock.times[-1] - clock.times[0] if len(clock.times) > 1 else None

    return generate


def teacher_forced_logits(model) -> "torch.Tensor":  # noqa: F821
    import torch

    ids = torch.tensor(np.random.default_rng(2).integers(300, min(model.config.vocab_size, 30000), (1, LOGIT_TOKENS)),
                       device=DEVICE)
    with torch.inference_mode():
        return model(data={"input_ids": ids}).logits[0].float()


def part_hf(model_path: Path, quant: str | None, args, watch: MemoryWatch, scratch: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from megrezo.quantization import llm_quantization_config

    extra = {"quantization_config": llm_quantization_config(quant)} if quant else {}
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=True, dtype=torch.bfloat16, **extra)
    model.to(DEVICE).eval()
    synchronize()
    result = {"load_s": time.perf_counter() - start, "weight_bytes": weight_bytes(model),
              "rss_after_load_bytes": watch.current(), "peak_rss_load_bytes": watch.peak()}
    config = model.config
    generate = hf_generate(model)
    kernel_bytes = {"bytes_per_weight": 1, "bytes_per_row_scale": 2} if quant else {}
    if DEVICE == "cpu":
        eager_bytes = {"bytes_per_weight": 1, "bytes_per_row_scale": 4} if quant else {}
        eager_tokens = max(4, args.new_tokens // 4) if quant else args.new_tokens
        result["decode_eager"] = [measure_decode(generate, config, watch, 1, eager_tokens, 1, **eager_bytes)]
        result["cpu_kernels_s"] = timed(lambda: result.setdefault("cpu_kernels", model.use_cpu_kernels()))
        result["cpu_plan"] = model.cpu_plan.as_dict()
    watch.reset()
    with torch.inference_mode():
        if not quant:
            processor = model.chat_processor()
            result["requests"] = {name: hf_request_stages(model, processor, conversation)
                                  for name, conversation in requests(processor.tokenizer).items()}
        result["decode"] = [measure_decode(generate, config, watch, batch, args.new_tokens, repeats,
                                           **kernel_bytes)
                            for batch, repeats in ((1, args.repeats), (8, 1))]
        result["peak_rss_generate_bytes"] = watch.peak()
        result["peak_rss_anon_generate_bytes"] = watch.peak_anon()
        if DEVICE != "cpu":
            result["peak_gpu_allocated_bytes"] = torch.cuda.max_memory_allocated()
            return result
        result["linear_layers_only"] = linear_layers_only(model, watch)
        logits = teacher_forced_logits(model)
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
    generators = {"quantized": hf_generate(quantized), "bf16": hf_generate(bf16)}
    rates: dict[str, list[float]] = {name: [] for name in generators}
    with torch.inference_mode():
        for _ in range(args.repeats + 1):
            for name, generate in generators.items():
                rates[name].append((args.new_tokens - 1) / generate(1, args.new_tokens))
    best = {name: max(values) for name, values in rates.items()}
    return {"new_tokens": args.new_tokens, "rounds_tokens_per_s": rates, "quantized_tokens_per_s": best["quantized"],
            "bf16_tokens_per_s": best["bf16"], "speedup": best["quantized"] / best["bf16"]}


def part_vllm(model_path: Path, args, watch: MemoryWatch) -> dict:
    from transformers import AutoConfig
    from vllm import SamplingParams

    from megrezo.processing_megrezo import MegrezOProcessor
    from vllm_demo.chat_requests import to_vllm_request
    from vllm_demo.offline import load_llm

    start = time.perf_counter()
    llm = load_llm(model_path, dtype="bfloat16", enable_prefix_caching=False, mm_processor_cache_gb=0,
                   kv_cache_memory_bytes=2 * 2**30, max_num_seqs=8)
    result = {"load_s": time.perf_counter() - start, "rss_after_load_bytes": watch.current(),
              "peak_rss_load_bytes": watch.peak(),
              "weight_bytes": sum(f.stat().st_size for f in Path(model_path).glob("*.safetensors"))}
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=True)
    processor = MegrezOProcessor.from_pretrained(model_path, trust_remote_code=True)
    watch.reset()

    def params(new_tokens: int) -> SamplingParams:
        return SamplingParams(temperature=0.0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True)

    result["requests"] = {}
    for name, conversation in requests(processor.tokenizer).items():
        request = to_vllm_request(processor, conversation)
        result["requests"][name] = {
            "first_token_s": timed(lambda request=request: llm.generate([request], params(1), use_tqdm=False))}

    def generate(batch: int, new_tokens: int) -> None:
        prompts = [{"prompt_token_ids": ids} for ids in decode_prompt(config.vocab_size, batch)]
        llm.generate(prompts, params(new_tokens), use_tqdm=False)
        return None

    result["decode"] = [measure_decode(generate, config, watch, batch, args.new_tokens, repeats)
                        for batch, repeats in ((1, args.repeats), (8, 1))]
    result["peak_rss_generate_bytes"] = watch.peak()
    result["peak_rss_anon_generate_bytes"] = watch.peak_anon()
    return result


def part_lora(model_path: Path, watch: MemoryWatch) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=True, dtype=torch.bfloat16)
    model.to(DEVICE)
    result = {"weight_bytes": weight_bytes(model), "rss_after_load_bytes": watch.current()}
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=r"llm\.model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj")
    model = get_peft_model(model, lora)
    model.train()
    processor = model.chat_processor()
    conversation = [{"role": "user", "content": seed_text(processor.tokenizer, 48)},
                    {"role": "assistant", "content": seed_text(processor.tokenizer, 16, seed=3)}]
    batch = {key: value.to(DEVICE) for key, value in processor([conversation], add_generation_prompt=False).items()
             if key in ("input_ids", "attention_mask")}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    watch.reset()
    if DEVICE != "cpu":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    loss = model(data={"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
                 labels=batch["input_ids"]).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    synchronize()
    by_dtype: dict[str, int] = {}
    for parameter in model.parameters():
        key = str(parameter.dtype).removeprefix("torch.")
        by_dtype[key] = by_dtype.get(key, 0) + parameter.numel() * parameter.element_size()
    result.update(step_s=time.perf_counter() - start, loss=float(loss), tokens=int(batch["input_ids"].shape[1]),
                  trainable_params=sum(p.numel() for p in trainable), parameter_bytes_by_dtype=by_dtype,
                  peak_rss_step_bytes=watch.peak())
    if DEVICE != "cpu":
        result["peak_gpu_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return result


def run_part(part: str, args) -> dict:
    """One part in this process (the parent starts one process per part)."""
    import torch

    from megrezo.tiny import cached_tiny_checkpoint

    model_path = Path(args.model_path) if args.model_path else cached_tiny_checkpoint(size=args.size,
                                                                                      dtype=torch.bfloat16)
    watch = MemoryWatch()
    scratch = Path(args.scratch)
    try:
        if part == "hf-bf16":
            result = part_hf(model_path, None, args, watch, scratch)
        elif part == "hf-int8":
            result = part_hf(model_path, "int8", args, watch, scratch)
        elif part == "vllm-bf16":
            result = part_vllm(model_path, args, watch)
        else:
            result = part_lora(model_path, watch)
    finally:
        watch.stop()
    device = torch.cuda.get_device_name() if DEVICE != "cpu" else f"cpu x{torch.get_num_threads()}"
    return {"part": part, "threads": torch.get_num_threads(), "device": device, **result}


def summary(results: dict) -> dict:
    """The goals' figures from the parts that ran."""
    decode = {}
    for part, result in results.items():
        for key in ("decode_eager", "decode"):
            for row in result.get(key, []):
                decode[(part, key, row["batch"])] = row
    out = {}
    best = max((row["roofline_fraction"] for (part, key, batch), row in decode.items()
                if batch == 1 and key == "decode" and part.endswith("bf16")), default=None)
    if best is not None:
        out["bf16_roofline_fraction"] = best
    bf16, int8 = decode.get(("hf-bf16", "decode", 1)), decode.get(("hf-int8", "decode", 1))
    bf16_eager = decode.get(("hf-bf16", "decode_eager", 1))
    if "beside_bf16" in results.get("hf-int8", {}):
        out["int8_speedup_over_bf16"] = results["hf-int8"]["beside_bf16"]["speedup"]
    if bf16 and int8:
        out["int8_speedup_over_bf16_separate_processes"] = int8["tokens_per_s"] / bf16["tokens_per_s"]
    if bf16_eager and int8:
        out["int8_speedup_over_bf16_nn_linear"] = int8["tokens_per_s"] / bf16_eager["tokens_per_s"]
    if "hf-bf16" in results:
        hf = results["hf-bf16"]
        out["peak_rss_over_weights"] = hf["peak_rss_generate_bytes"] / hf["weight_bytes"]
        if "peak_gpu_allocated_bytes" in hf:
            out["peak_gpu_allocated_over_weights"] = hf["peak_gpu_allocated_bytes"] / hf["weight_bytes"]
        if "peak_rss_anon_generate_bytes" in hf:
            out["peak_anonymous_rss_over_weights"] = hf["peak_rss_anon_generate_bytes"] / hf["weight_bytes"]
    if "logits_vs_bf16" in results.get("hf-int8", {}):
        out["int8_logits_relative_error"] = results["hf-int8"]["logits_vs_bf16"]["relative_l2"]
        out["int8_top1_agreement"] = results["hf-int8"]["logits_vs_bf16"]["top1_agreement"]
    return out


def decode_rows(results: dict) -> list[tuple[str, dict]]:
    labels = {("hf-bf16", "decode_eager"): "HF bf16, nn.Linear", ("hf-bf16", "decode"): "HF bf16, CPU kernels",
              ("hf-int8", "decode_eager"): "HF int8, torchao eager", ("hf-int8", "decode"): "HF int8, CPU kernel",
              ("vllm-bf16", "decode"): "vLLM bf16"}
    on_gpu = {part for part, result in results.items() if not result.get("device", "cpu").startswith("cpu")}
    return [(labels[(part, key)].replace(", CPU kernels", f" on {results[part]['device']}") if part in on_gpu
             else labels[(part, key)], row)
            for (part, key) in labels for row in results.get(part, {}).get(key, [])]


def draw_chart(results: dict, out: Path, size: str, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = decode_rows(results)
    fig, axis = plt.subplots(figsize=(10, 5))
    labels = [f"{label.replace(', ', chr(10))}\nbatch {row['batch']}" for label, row in rows]
    values = [row["roofline_fraction"] for _, row in rows]
    colors = ["#DD8452" if label.startswith("vLLM") else "#55A868" if "int8" in label else "#4C72B0"
              for label, _ in rows]
    bars = axis.bar(range(len(rows)), values, color=colors)
    axis.bar_label(bars, labels=[f"{v:.0%}\n{row['tokens_per_s']:.2f} tok/s" for v, (_, row) in zip(values, rows, strict=True)],
                   fontsize=8)
    axis.axhline(GOALS["bf16_roofline_fraction"], color="grey", linestyle="--", linewidth=1)
    axis.set_xticks(range(len(rows)), labels, fontsize=7)
    axis.set_ylabel("decode speed / memory roofline")
    axis.set_ylim(0, max(values + [1.0]) * 1.25)
    axis.set_title(f"Decode at {size} size on {device}: fraction of bandwidth / bytes per step")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def print_tables(report: dict) -> None:
    gb = 1e9
    print("\n| backend | batch | tokens/s | bandwidth GB/s | bytes/step GB | roofline tokens/s | fraction |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, row in decode_rows(report["parts"]):
        print(f"| {label} | {row['batch']} | {row['tokens_per_s']:.2f} | {row['bandwidth_gb_s']:.1f} | "
              f"{row['bytes_per_step'] / gb:.2f} | {row['roofline_tokens_per_s']:.2f} | {row['roofline_fraction']:.0%} |")
    print("\n| part | load s | weights GB | RSS after load GB | peak RSS GB |")
    print("| --- | --- | --- | --- | --- |")
    for part, result in report["parts"].items():
        peak = result.get("peak_rss_generate_bytes", result.get("peak_rss_step_bytes", 0))
        weights = result.get("weight_bytes")
        print(f"| {part} | {result.get('load_s', float('nan')):.1f} | "
              f"{weights / gb if weights else float('nan'):.2f} | {result['rss_after_load_bytes'] / gb:.2f} | "
              f"{peak / gb:.2f} |")
    for part in ("hf-bf16", "vllm-bf16"):
        for name, stages in report["parts"].get(part, {}).get("requests", {}).items():
            print(f"{part} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    beside = report["parts"].get("hf-int8", {}).get("beside_bf16")
    if beside:
        print(f"int8 beside bf16 in one process, batch 1: {beside['quantized_tokens_per_s']:.2f} against "
              f"{beside['bf16_tokens_per_s']:.2f} tokens/s ({beside['speedup']:.2f}x)")
    print("\nsummary:", json.dumps(report["summary"], indent=1))


def main() -> None:
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="full", help="a megrezo.tiny size (default: full)")
    parser.add_argument("--model_path", help="a real checkpoint instead of random weights")
    parser.add_argument("--parts", nargs="+", choices=PARTS, help="default: every part the device runs")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: the parts hf-bf16 and lora")
    parser.add_argument("--new-tokens", type=int, default=16, help="new tokens per decode round")
    parser.add_argument("--repeats", type=int, default=2,
                        help="decode rounds at batch 1 (the best is kept; batch 8 runs one)")
    add_out_argument(parser)
    parser.add_argument("--child", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--child-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    DEVICE = args.device
    on_gpu = DEVICE != "cpu"
    args.parts = args.parts or list(GPU_PARTS if on_gpu else PARTS)
    if on_gpu and set(args.parts) - set(GPU_PARTS):
        parser.error(f"on {DEVICE} only the parts {', '.join(GPU_PARTS)} run (the others are the CPU's)")

    if args.child:
        Path(args.child_json).write_text(json.dumps(run_part(args.child, args)))
        return

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for part in args.parts:
            child_json = Path(scratch) / f"{part}.json"
            command = [sys.executable, str(Path(__file__).resolve()), "--child", part, "--size", args.size,
                       "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats),
                       "--device", DEVICE, "--scratch", scratch, "--child-json", str(child_json)]
            if args.model_path:
                command += ["--model_path", args.model_path]
            print(f"== {part}", flush=True)
            started = time.perf_counter()
            finished = subprocess.run(command, cwd=ROOT)
            if finished.returncode != 0 or not child_json.exists():
                results[part] = {"error": f"exit code {finished.returncode}"}
                print(f"{part} failed (exit code {finished.returncode})", flush=True)
                continue
            results[part] = json.loads(child_json.read_text())
            results[part]["wall_s"] = time.perf_counter() - started
            results[part]["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    size = args.size if not args.model_path else "checkpoint"
    name = "full_size" + ("" if size == "full" else f"_{size}") + ("_cuda" if on_gpu else "")
    earlier = json.loads((out / f"{name}.json").read_text())["parts"] if (out / f"{name}.json").exists() else {}
    results = {**{part: result for part, result in earlier.items() if "error" not in result}, **results}
    done = {part: result for part, result in results.items() if "error" not in result}
    import torch

    from megrezo.cpu_plan import FORCE_VARIABLE, classify, detect_cpu

    facts = detect_cpu()
    report = {"size": size, "machine": {
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "cpu_flags": facts.vector_flags(), "cpu_class": classify(facts),
        "forced_cpu_class": os.environ.get(FORCE_VARIABLE) or None,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(DEVICE) if on_gpu else f"{os.cpu_count()} CPU cores"},
        "goals": GOALS, "summary": summary(done), "parts": results}
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    if any(decode_rows(done)):
        draw_chart(done, out / f"{name}.png", report["size"], report["machine"]["device"])
    report["parts"] = done
    print_tables(report)
    print(f"\nwritten: {out / (name + '.json')}")


if __name__ == "__main__":
    main()
