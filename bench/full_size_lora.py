"""The part `lora` of bench/full_size.py: one LoRA optimizer step on the bfloat16 model, for its peak memory and
the bytes each parameter dtype takes (the adapters train in float32 beside the bfloat16 base)."""

import time
from pathlib import Path

from full_size_inputs import seed_text
from measuring import MemoryWatch, synchronize, weight_bytes


def part_lora(model_path: Path, device: str, watch: MemoryWatch) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=True, dtype=torch.bfloat16)
    model.to(device)
    result = {"weight_bytes": weight_bytes(model), "rss_after_load_bytes": watch.current()}
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=r"llm\.model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj")
    model = get_peft_model(model, lora)
    model.train()
    processor = model.chat_processor()
    conversation = [{"role": "user", "content": seed_text(processor.tokenizer, 48)},
                    {"role": "assistant", "content": seed_text(processor.tokenizer, 16, seed=3)}]
    batch = {key: value.to(device) for key, value in processor([conversation], add_generation_prompt=False).items()
             if key in ("input_ids", "attention_mask")}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    watch.reset()
    if device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    loss = model(data={"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
                 labels=batch["input_ids"]).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    synchronize(device)
    by_dtype: dict[str, int] = {}
    for parameter in model.parameters():
        key = str(parameter.dtype).removeprefix("torch.")
        by_dtype[key] = by_dtype.get(key, 0) + parameter.numel() * parameter.element_size()
    result.update(step_s=time.perf_counter() - start, loss=float(loss), tokens=int(batch["input_ids"].shape[1]),
                  trainable_params=sum(p.numel() for p in trainable), parameter_bytes_by_dtype=by_dtype,
                  peak_rss_step_bytes=watch.peak())
    if device != "cpu":
        result["peak_gpu_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return result
