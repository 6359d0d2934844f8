"""Offline generation with vLLM: text, an image, a spoken clip, and image + audio, each alone and then all four in one
batch, with the authors' settings (greedy, repetition penalty 1.2, stop on `<|turn_end|>` or `<|eos|>`).

    python vllm_demo/example_infer_vllm.py [--model_path DIR] [--dtype auto|float32|bfloat16] [--max_tokens N]

Without --model_path the tiny random checkpoint is used (made on first use in ~/.cache/megrezo): it runs every code
path of the real model, but its weights are random, so its replies are random words.
"""

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    # Run as a script: make the repository's packages (`vllm_demo`, `megrezo`) importable.
    sys.path.insert(0, str(ROOT))

from megrezo.import_noise import drop_import_noise  # noqa: E402

# vLLM's engine processes re-import this file before torch: the filters then hold there too.
drop_import_noise()

DATA_DIR = ROOT / "data"
IMAGE_PATH = DATA_DIR / "sample_image.jpg"
AUDIO_PATH = DATA_DIR / "sample_audio.wav"

EXAMPLES = {
    "text": [{"role": "user", "content": "Introduce yourself in two sentences."}],
    "image": [{"role": "user", "content": {"text": "Describe this picture.", "image": str(IMAGE_PATH)}}],
    "audio": [{"role": "user", "content": {"text": "What does the speaker say?", "audio": str(AUDIO_PATH)}}],
    "image+audio": [
        {
            "role": "user",
            "content": {
                "text": "Answer the spoken question about the picture.",
                "image": str(IMAGE_PATH),
                "audio": str(AUDIO_PATH),
            },
        }
    ],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_path", help="checkpoint folder (default: the tiny random checkpoint)")
    parser.add_argument("--dtype", default="auto", help="vLLM dtype (default: the checkpoint's; float32 on CPU)")
    parser.add_argument("--max_tokens", type=int, default=64, help="longest reply in tokens (default: 64)")
    parser.add_argument("--max_model_len", type=int, default=4096, help="context length (default: 4096)")
    parser.add_argument("--gpu_memory_utilization", type=float, default=0.2,
                        help="share of GPU memory (on a CPU: of memory for the KV cache) to use (default: 0.2)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from megrezo.tiny import model_path_or_tiny

    model_path = model_path_or_tiny(args.model_path)

    from megrezo.processing_megrezo import MegrezOProcessor
    from vllm_demo.offline import close_llm, load_llm

    processor = MegrezOProcessor.from_pretrained(model_path, trust_remote_code=True)
    dtype = "float32" if args.dtype == "auto" and not _has_cuda() else args.dtype
    llm = load_llm(
        model_path, dtype=dtype, max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization
    )
    try:
        run_examples(llm, processor, args.max_tokens)
    finally:
        close_llm(llm)


def run_examples(llm, processor, max_tokens: int) -> None:
    from vllm_demo.chat_requests import authors_sampling_params, to_vllm_request

    params = authors_sampling_params(processor, max_tokens=max_tokens)
    requests = {name: to_vllm_request(processor, messages) for name, messages in EXAMPLES.items()}

    alone = {}
    for name, request in requests.items():
        output = llm.generate([request], params, use_tqdm=False)[0]
        alone[name] = list(output.outputs[0].token_ids)
        print(f"[{name}] ({len(output.prompt_token_ids)} prompt tokens) {output.outputs[0].text!r}")

    start = time.perf_counter()
    batch = llm.generate(list(requests.values()), params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    generated = sum(len(output.outputs[0].token_ids) for output in batch)
    print(f"batch of {len(batch)}: {generated} tokens in {elapsed:.2f} s")
    for name, output in zip(requests, batch, strict=True):
        same = "same tokens as alone" if list(output.outputs[0].token_ids) == alone[name] else "DIFFERS from alone"
        print(f"[{name}, batched] {same}: {output.outputs[0].text!r}")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
