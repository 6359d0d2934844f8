"""Text-only decode throughput: MegrezO.generate versus a plain LlamaForCausalLM holding the same LLM weights.

Both run side by side in one process, alternating, so machine load affects both alike. The figure of merit is the
ratio (goal >= 0.95): MegrezO adds only the embedding composition before handing the prompt to the LLM.

    python bench/decode_throughput.py --size small --new-tokens 128 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import TYPE_CHECKING

from measuring import timed
from output_folder import add_out_argument
from tqdm import tqdm

from megrezo.tiny import MODEL_SIZES, build_tokenizer, sized_config

if TYPE_CHECKING:  # torch and the models load when the benchmark runs, so that --help answers at once
    from transformers import LlamaForCausalLM

    from megrezo.modeling_megrezo import MegrezO


def build_pair(size: str) -> tuple[MegrezO, LlamaForCausalLM]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from megrezo.modeling_megrezo import MegrezO

    config = sized_config(size, build_tokenizer())
    torch.manual_seed(0)
    model = MegrezO(config).eval()
    plain = LlamaForCausalLM(LlamaConfig(**{k: getattr(config, k) for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_parameters", "head_dim")},
        tie_word_embeddings=False)).eval()
    plain.load_state_dict({k.removeprefix("llm."): v for k, v in model.state_dict().items() if k.startswith("llm.")})
    return model, plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(MODEL_SIZES), default="small", help="random weights (default: small)")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="default: 128")
    parser.add_argument("--new-tokens", type=int, default=128, help="default: 128")
    parser.add_argument("--batch", type=int, default=1, help="default: 1")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the median counts (default: 5)")
    add_out_argument(parser)
    args = parser.parse_args()
    import torch

    model, plain = build_pair(args.size)
    ids = torch.randint(0, 256, (args.batch, args.prompt_tokens))
    mask = torch.ones_like(ids)
    options = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False,
               "eos_token_id": None, "pad_token_id": 0}
    runs = {
        "MegrezO.generate": lambda: model.generate(ids, attention_mask=mask, **options),
        "LlamaForCausalLM.generate": lambda: plain.generate(input_ids=ids, attention_mask=mask, **options),
    }
    with torch.inference_mode():
        assert runs["MegrezO.generate"]().tolist() == runs["LlamaForCausalLM.generate"]()[:, ids.shape[1]:].tolist()
        seconds = {name: [] for name in runs}
        for _ in tqdm(range(args.repeats), desc="rounds"):
            for name, run in runs.items():
                seconds[name].append(timed(run))
    tokens = args.batch * args.new_tokens
    result = {
        "size": args.size, "threads": torch.get_num_threads(), "batch": args.batch,
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "repeats": args.repeats,
        "tokens_per_s": {name: tokens / statistics.median(s) for name, s in seconds.items()},
    }
    result["ratio"] = result["tokens_per_s"]["MegrezO.generate"] / result["tokens_per_s"]["LlamaForCausalLM.generate"]
    args.out.mkdir(parents=True, exist_ok=True)
    written = args.out / "decode_throughput.json"
    written.write_text(json.dumps(result, indent=2) + "\n")
    for name, rate in result["tokens_per_s"].items():
        print(f"{name:28s} {rate:9.1f} tokens/s")
    print(f"{'ratio':28s} {result['ratio']:9.3f}  (goal >= 0.95)")
    print(f"written to {written}")


if __name__ == "__main__":
    main()
