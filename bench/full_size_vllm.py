"""The part `vllm-bf16` of bench/full_size.py: vLLM's CPU backend in bfloat16, with the same requests and decode
prompts as the transformers parts."""

import time
from pathlib import Path

from full_size_decode import measure_decode
from full_size_inputs import decode_prompt, requests
from measuring import MemoryWatch, timed


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

    result["decode"] = [measure_decode(generate, config, watch, "cpu", batch, args.new_tokens, repeats)
                        for batch, repeats in ((1, args.repeats), (8, 1))]
    result["peak_rss_generate_bytes"] = watch.peak()
    result["peak_rss_anon_generate_bytes"] = watch.peak_anon()
    return result
