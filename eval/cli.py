"""`python -m eval run ...` evaluates a checkpoint on a JSONL; `python -m eval convert FORMAT ...` makes that JSONL
from a benchmark's files. `python -m eval run --help` lists every option."""

import argparse
import sys

from .errors import RunError
from .help_format import DefaultsHelpFormatter
from .prompts import DEFAULT_PROMPTS, check_template
from .runner import RunOptions, evaluate
from .samples import DataError
from .scoring import TASKS, TEXT_METRICS, VQA_METRICS, check_metric

DEFAULT_MAX_NEW_TOKENS = {"asr": 256, "vqa": 64, "choice": 32, "text": 512}


def add_run_parser(commands) -> None:
    run = commands.add_parser("run", help="generate predictions for a JSONL and score them",
                              formatter_class=DefaultsHelpFormatter)
    run.add_argument("--task", required=True, choices=TASKS, help="what the samples ask and how answers are scored")
    run.add_argument("--data", required=True, help="the samples (JSONL; media paths relative to its folder)")
    run.add_argument("--model_path", required=True, help="checkpoint folder")
    run.add_argument("--out", required=True, help="output folder; rerun with the same one to resume")
    run.add_argument("--backend", choices=["hf", "vllm", "llama.cpp"], default="hf",
                     help="hf: transformers (model.chat, batched); llama.cpp: the language model from --gguf in "
                     "llama.cpp, the encoders in torch on the CPU; vllm: the vLLM engine")
    run.add_argument("--gguf", help="llama.cpp: the GGUF file (python -m megrezo.gguf export CHECKPOINT OUT.gguf)")
    run.add_argument("--prompt", help="prompt template with {question} and {options} (default: the task's, "
                     "see eval/prompts.py)")
    run.add_argument("--system", help="system turn (default: none, so the chat template's default system turn)")
    run.add_argument("--metric", choices=sorted(VQA_METRICS | TEXT_METRICS),
                     help="vqa task: vqa_accuracy (VQAv2/TextVQA, default), anls (DocVQA) or relaxed_accuracy "
                     "(ChartQA); text task: exact_match (GSM8K's official string comparison, default) or "
                     "numeric_match (lenient: equal values, 72.0 = 72)")
    run.add_argument("--language", default="en", help="asr: language of samples without one (zh: CER, else WER)")
    run.add_argument("--circular", action="store_true",
                     help="choice: also ask every rotation of the options and report circular accuracy")
    run.add_argument("--max_new_tokens", type=int, help=f"default per task: {DEFAULT_MAX_NEW_TOKENS}")
    run.add_argument("--repetition_penalty", type=float, default=1.0,
                     help="1.0 is no penalty; the authors' chat setting is 1.2 (both backends get the same value)")
    run.add_argument("--batch_size", type=int, default=8, help="hf: conversations per model.chat batch")
    run.add_argument("--max_in_flight", type=int, default=256, help="vllm: requests in the engine at once")
    run.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, bfloat16 or float16")
    run.add_argument("--device", help="hf: torch device (default: cuda when available, else cpu)")
    run.add_argument("--max_model_len", type=int, default=4096, help="vllm: context length")
    run.add_argument("--gpu_memory_utilization", type=float, default=0.2,
                     help="vllm: share of GPU (or, on CPU, KV cache) memory to use")


def run_command(args: argparse.Namespace) -> None:
    prompt = args.prompt if args.prompt is not None else DEFAULT_PROMPTS[args.task]
    check_template(prompt)
    try:
        check_metric(args.task, args.metric)
    except ValueError as error:
        raise RunError(str(error)) from None
    for name in ("batch_size", "max_in_flight", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise RunError(f"--{name} must be at least 1, got {value}")
    if (args.backend == "llama.cpp") != (args.gguf is not None):
        raise RunError("--backend llama.cpp needs --gguf FILE, and --gguf needs --backend llama.cpp")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    options = RunOptions(
        task=args.task, data=args.data, model_path=args.model_path, out=args.out, prompt=prompt,
        backend=args.backend, system=args.system, metric=args.metric, language=args.language,
        circular=args.circular, max_new_tokens=args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[args.task],
        repetition_penalty=args.repetition_penalty, batch_size=args.batch_size, max_in_flight=args.max_in_flight,
        dtype=args.dtype, device=args.device, max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization, gguf=args.gguf,
    )
    metrics = evaluate(options)
    for name, value in metrics["headline"].items():
        print(f"{name}: {'–' if value is None else f'{value:.2f}'} %")
    print(f"written to {args.out}: predictions.jsonl, scored.jsonl, metrics.json, report.md")


def main(argv: list[str] | None = None) -> None:
    from .converters.cli import add_convert_parser

    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_run_parser(commands)
    add_convert_parser(commands)
    args = parser.parse_args(argv)
    try:
        if args.command == "convert":
            convert_command(args)
        else:
            run_command(args)
    except (DataError, RunError) as error:
        sys.exit(f"error: {error}")


def convert_command(args: argparse.Namespace) -> None:
    """Converters state bad input (a missing file, an unknown column) as ValueError or OSError."""
    try:
        args.handler(args)
    except (ValueError, OSError) as error:
        sys.exit(f"error: {error}")
