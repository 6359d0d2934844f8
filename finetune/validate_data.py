"""Check a finetuning JSONL before any GPU time is spent on it, reporting every problem with its line number.

`python finetune/validate_data.py DATA.jsonl --dataset_prefix DIR --model_path M [--model_max_length N]` reads every
line and checks: valid JSON; the `{"conversations": [...]}` shape with known roles and content keys; that each
media path stays inside `--dataset_prefix`, exists, and decodes (images open, audio decodes); and that the
tokenized sample, with its media tokens, fits in `model_max_length`. It prints one line per problem and exits
non-zero if there is any. `finetune.py` runs the same checks (`check_jsonl`) before training.
"""

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from megrezo.conversation import media_items, validate_conversation

MEDIA_KINDS = ("image", "audio")


@dataclass
class Problem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class Record:
    """A checked line: its number and its conversation with media paths made absolute."""

    line: int
    conversation: list[dict]


def resolve_media(path: object, prefix: Path, kind: str) -> Path:
    """The absolute path of a media reference; raises ValueError when it is not a relative path that stays
    inside the prefix (an absolute path or `..` would let a dataset read arbitrary files)."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{kind} must be a path string relative to --dataset_prefix, got {path!r}")
    resolved = (prefix / path).resolve()
    if not resolved.is_relative_to(prefix.resolve()):
        raise ValueError(f"{kind} path {path!r} escapes --dataset_prefix {prefix}")
    if not resolved.is_file():
        raise ValueError(f"{kind} file not found: {path!r} (looked for {resolved})")
    return resolved


def _decode(path: Path, kind: str) -> None:
    """Decodes the file as training will; every failure becomes a ValueError naming the file. An image above the
    pixel limit keeps the loader's message, which names the file and the limit. (Imported here, since the
    decoders bring torch, and `--help` should answer at once.)"""
    from megrezo.audio_processing import load_audio
    from megrezo.image_processing_megrezo import ImageTooLargeError, load_image

    try:
        load_image(path) if kind == "image" else load_audio(path)
    except ImageTooLargeError:
        raise
    except (ValueError, OSError) as error:
        what = "corrupt image" if kind == "image" else "undecodable audio"
        raise ValueError(f"{what}: {path.name} ({error})") from error


def check_line(text: str, prefix: Path, processor, model_max_length: int) -> tuple[list[dict] | None, list[str]]:
    """(conversation with absolute media paths, or None; problems) for one JSONL line."""
    try:
        record = json.loads(text.strip())
    except (json.JSONDecodeError, RecursionError) as error:
        return None, [f"not valid JSON ({error})"]
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        return None, ['expected an object {"conversations": [...]}']
    conversation = record["conversations"]
    try:
        validate_conversation(conversation, add_generation_prompt=False)
    except ValueError as error:
        return None, [str(error)]
    if not any(message["role"] == "assistant" for message in conversation):
        return None, ["no assistant turn: nothing to learn from this conversation"]
    problems, resolved = [], []
    for index, message in enumerate(conversation):
        content = message["content"]
        if isinstance(content, dict):
            content = dict(content)
            if message["role"] == "assistant":
                problems += [
                    f"messages[{index}]: {kind} in an assistant turn: the model reads media but never writes them, "
                    "so put it in the user turn before"
                    for kind in MEDIA_KINDS
                    if media_items(content.get(kind))
                ]
            for kind in MEDIA_KINDS:
                paths = []
                for item in media_items(content.get(kind)):
                    try:
                        path = resolve_media(item, prefix, kind)
                        _decode(path, kind)
                        paths.append(str(path))
                    except ValueError as error:
                        problems.append(f"messages[{index}]: {error}")
                if kind in content:
                    content[kind] = paths
        resolved.append({"role": message["role"], "content": content})
    if problems:
        return None, problems
    try:
        sample = processor.process_multimodal_inputs(resolved, add_generation_prompt=False, with_labels=True)
    except (ValueError, OSError) as error:
        return None, [str(error)]
    length = len(sample["input_ids"])
    if length > model_max_length:
        return None, [f"{length} tokens with media tokens, more than model_max_length {model_max_length}"]
    return resolved, []


def check_jsonl(path: str | Path, prefix: str | Path, processor, model_max_length: int) -> tuple[list[Record], list[Problem]]:
    """Every line of a JSONL file checked; records are returned only for lines without problems. Lines are decoded
    one by one, so a line that is not UTF-8 is reported with its number like any other problem."""
    path, prefix = Path(path), Path(prefix)
    if not path.is_file():
        return [], [Problem(0, f"data file not found: {path}")]
    if not prefix.is_dir():
        return [], [Problem(0, f"--dataset_prefix is not a folder: {prefix}")]
    records, problems = [], []
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                problems.append(Problem(number, f"not valid UTF-8 (byte {raw[error.start]:#04x} at column {error.start + 1})"))
                continue
            if not text.strip():
                continue
            conversation, messages = check_line(text, prefix, processor, model_max_length)
            problems += [Problem(number, message) for message in messages]
            if conversation is not None:
                records.append(Record(number, conversation))
    if not records and not problems:
        problems.append(Problem(0, f"{path} holds no conversations"))
    return records, problems


def positive_int(text: str) -> int:
    """argparse type for counts and sizes: a bad value is refused by name before anything is loaded."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_path", help="the finetuning JSONL, one conversation per line")
    parser.add_argument("--dataset_prefix", default=None, help="media root; default: the JSONL's folder")
    parser.add_argument("--model_path", required=True, help="checkpoint whose processor tokenizes the samples")
    parser.add_argument("--model_max_length", type=positive_int, default=2048,
                        help="longest sample in tokens, media included (default: 2048)")
    parser.add_argument("--max_slice_nums", type=positive_int, default=None,
                        help="most slices per image (default: the checkpoint's, 9 for the release)")
    parser.add_argument("--scale_resolution", type=positive_int, default=None,
                        help="side of a slice in pixels (default: the checkpoint's, 448 for the release)")
    args = parser.parse_args(argv)
    from megrezo.processing_megrezo import MegrezOProcessor

    processor = MegrezOProcessor.from_pretrained(args.model_path, trust_remote_code=True)  # not AutoProcessor: see finetune.py
    configure_images(processor, args.max_slice_nums, args.scale_resolution)
    prefix = args.dataset_prefix or str(Path(args.data_path).parent)
    records, problems = check_jsonl(args.data_path, prefix, processor, args.model_max_length)
    for problem in problems:
        print(problem)
    print(f"{args.data_path}: {len(records)} good conversations, {len(problems)} problems")
    return 1 if problems else 0


def configure_images(processor, max_slice_nums: int | None, scale_resolution: int | None) -> None:
    """Apply the slicing overrides to the processor itself, so training, validation and the saved processor agree."""
    if max_slice_nums is not None:
        processor.image_processor.max_slice_nums = max_slice_nums
    if scale_resolution is not None:
        processor.image_processor.scale_resolution = scale_resolution


if __name__ == "__main__":
    sys.exit(main())
