"""Chat with Megrez-3B-Omni through transformers: one turn with a picture, a spoken question and text, then a
text-only follow-up that refers back to them (the picture and recording are data/sample_image.jpg and
data/sample_audio.wav).

    python example_chat_hf.py [--model_path DIR] [--device cpu|cuda] [--dtype auto|float32|bfloat16|float16]
                              [--quant int8] [--stream]
                              [--gguf FILE]

Without --model_path the tiny random checkpoint is used (made on first use in ~/.cache/megrezo): it runs every code
path of the real model, but its weights are random, so its replies are random words.
With --gguf (a file from `python -m megrezo.gguf export`) the language model runs in llama.cpp, the encoders in torch
on the CPU (needs `make setup-llamacpp`).
"""

import argparse
import sys
from pathlib import Path

from megrezo.loading import DTYPE_CHOICES, DTYPE_HELP
from megrezo.quantization import QUANTIZATIONS

DATA_DIR = Path(__file__).resolve().parent / "data"
IMAGE_PATH = DATA_DIR / "sample_image.jpg"
AUDIO_PATH = DATA_DIR / "sample_audio.wav"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Chat with Megrez-3B-Omni through transformers: a turn with a picture, a spoken question and "
        "text, then a text-only follow-up."
    )
    parser.add_argument("--model_path", help="checkpoint folder (default: the tiny random checkpoint, whose replies "
                        "are random words)")
    parser.add_argument("--device", help="where the model runs (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help=DTYPE_HELP)
    parser.add_argument("--quant", choices=QUANTIZATIONS, help="weight-only quantization of the language model")
    parser.add_argument("--gguf", help="run the language model in llama.cpp from this GGUF file (on the CPU)")
    parser.add_argument("--stream", action="store_true", help="print the reply while it is generated")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="longest reply in tokens (default: 64)")
    return parser.parse_args()


def reply(model, messages: list[dict], stream: bool, max_new_tokens: int) -> str:
    """One reply, printed as it is generated when streaming."""
    if not stream:
        text = model.chat(messages, max_new_tokens=max_new_tokens)
        print(text)
        return text
    pieces = []
    for piece in model.chat(messages, max_new_tokens=max_new_tokens, stream=True):
        print(piece, end="", flush=True)
        pieces.append(piece)
    print()
    return "".join(pieces)


def main() -> None:
    args = parse_args()
    import torch

    from megrezo.loading import dtype_from_name, load_chat_model
    from megrezo.tiny import model_path_or_tiny

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_path = model_path_or_tiny(args.model_path)
    device = "cpu" if args.gguf else device
    model = load_chat_model(model_path, device, dtype_from_name(args.dtype), args.quant, gguf=args.gguf)

    messages = [
        {
            "role": "user",
            "content": {
                "text": "Please answer the question in the recording about this picture.",
                "image": str(IMAGE_PATH),
                "audio": str(AUDIO_PATH),
            },
        }
    ]
    print("User: [picture] [spoken question] Please answer the question in the recording about this picture.")
    print("Assistant: ", end="", flush=True)
    first = reply(model, messages, args.stream, args.max_new_tokens)

    messages += [
        {"role": "assistant", "content": first if first.strip() else "(no reply)"},
        {"role": "user", "content": "Which of those colours covers the largest area?"},
    ]
    print("User: Which of those colours covers the largest area?")
    print("Assistant: ", end="", flush=True)
    reply(model, messages, args.stream, args.max_new_tokens)


if __name__ == "__main__":
    sys.exit(main())
