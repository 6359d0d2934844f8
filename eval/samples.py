"""The evaluation JSONL: one sample per line, checked line by line before any model is loaded.

    {"id": "q1", "question": "What colour is the car?", "image": "images/1.jpg", "answer": ["red", "red", ...]}
    {"id": "a1", "audio": "audio/1.wav", "answer": "the reference transcript", "language": "en"}
    {"id": "c1", "question": "Which animal?", "image": "x.png", "choices": ["cat", "dog"], "answer": "B"}

Fields: `id` (a string or number, unique; default: the line number), `question` (text; needed by `vqa` and
`text`, optional for `asr`), `image` and `audio` (a path or a list of paths, relative to the JSONL's folder),
`answer` (the reference: a string or a list of accepted answers, e.g. the 10 VQA annotators), `choices` (a list of
option texts, lettered A, B, ... in order; the answer is then a letter), `language` (`asr`: "en", "zh", ...) and
`subset` (any label; metrics are also broken down by it).

`read_samples` checks each line's form (and what the task needs); `check_media` then decodes every image and audio
file with the loaders `model.chat` uses, still before any model is loaded, so a corrupt file is named with its line
and skipped instead of stopping a run after the model has loaded.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from .metrics.choice import LETTERS

TASK_NEEDS = {
    "asr": ("audios", "an 'audio' file"),
    "vqa": ("question", "a 'question'"),
    "choice": ("choices", "'choices'"),
    "text": ("question", "a 'question'"),
}
"""What every sample of a task must have: the Sample field and how to name it."""


@dataclass
class Sample:
    id: str
    answers: list[str]
    question: str = ""
    images: list[Path] = field(default_factory=list)
    audios: list[Path] = field(default_factory=list)
    choices: list[str] = field(default_factory=list)
    language: str | None = None
    subset: str | None = None
    line: int = 0


class DataError(ValueError):
    """Problems found in a data file, one line each, with their line numbers."""

    def __init__(self, path: Path, problems: list[str]):
        self.problems = problems
        if len(problems) == 1:
            super().__init__(f"{path}: {problems[0]}")
            return
        listing = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"{path}: {len(problems)} problem(s):\n{listing}")


def _paths(value, key: str, folder: Path) -> list[Path]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, str) and item for item in items):
        raise ValueError(f"'{key}' must be a path or a list of paths")
    paths = [folder / item for item in items]
    missing = [str(item) for item, path in zip(items, paths, strict=True) if not path.is_file()]
    if missing:
        raise ValueError(f"{key} file not found: {', '.join(missing)}")
    return paths


def _answers(value) -> list[str]:
    answers = value if isinstance(value, list) else [value]
    if not answers or not all(isinstance(answer, str) and answer.strip() for answer in answers):
        raise ValueError("no reference: 'answer' must be a non-empty string or a list of them")
    return answers


def parse_sample(record: dict, line_number: int, folder: Path) -> Sample:
    """One JSONL record as a Sample; a ValueError names what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    if "answer" not in record:
        raise ValueError("no reference: 'answer' is missing")
    identifier = record.get("id", line_number)
    if isinstance(identifier, bool) or not isinstance(identifier, str | int):
        raise ValueError(f"'id' must be a string or a whole number, got {type(identifier).__name__} {identifier!r:.60}")
    sample = Sample(id=str(identifier), answers=_answers(record["answer"]), line=line_number)
    for key in ("question", "language", "subset"):
        if key in record and not isinstance(record[key], str):
            raise ValueError(f"'{key}' must be a string")
    sample.question = record.get("question", "")
    sample.language = record.get("language")
    sample.subset = record.get("subset")
    if "image" in record:
        sample.images = _paths(record["image"], "image", folder)
    if "audio" in record:
        sample.audios = _paths(record["audio"], "audio", folder)
    if "choices" in record:
        choices = record["choices"]
        if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
            raise ValueError(f"'choices' must be a list of 2 to {len(LETTERS)} option texts")
        sample.choices = [str(choice) for choice in choices]
        valid = LETTERS[: len(choices)]
        if any(answer not in valid for answer in sample.answers):
            raise ValueError(f"the answer of a multiple-choice item must be one of the letters {', '.join(valid)}")
    return sample


def read_samples(path: str | Path, task: str | None = None) -> list[Sample]:
    """Every sample of the file; raises DataError listing every bad line (bytes that are not UTF-8, bad JSON,
    missing media, no reference, a repeated id, a field the task needs) so all can be fixed at once."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, ["file not found"])
    samples, problems, seen = [], [], {}
    for line_number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            problems.append(f"line {line_number}: not valid UTF-8 (byte {raw[error.start]:#04x} at column "
                            f"{error.start + 1}); save the file as UTF-8")
            continue
        if not line.strip():
            continue
        try:
            sample = parse_sample(json.loads(line), line_number, path.parent)
            if task in TASK_NEEDS and not getattr(sample, TASK_NEEDS[task][0]):
                raise ValueError(f"task {task} needs {TASK_NEEDS[task][1]} in every sample")
        except json.JSONDecodeError as error:
            problems.append(f"line {line_number}: not valid JSON ({error.msg})")
            continue
        except ValueError as error:
            problems.append(f"line {line_number}: {error}")
            continue
        if sample.id in seen:
            problems.append(f"line {line_number}: id {sample.id!r} already used on line {seen[sample.id]}")
            continue
        seen[sample.id] = line_number
        samples.append(sample)
    if problems:
        raise DataError(path, problems)
    if not samples:
        raise DataError(path, ["no samples"])
    return samples


def check_media(samples: list[Sample]) -> tuple[list[Sample], list[str]]:
    """(the samples whose images and audio all decode, a problem line for each other sample). Images are opened at
    reduced scale where the format allows it (enough to find a truncated or mislabelled file) and checked against
    the pixel limit; audio is decoded in full, as `model.chat` will."""
    from megrezo.audio_processing import load_audio
    from megrezo.image_processing_megrezo import decode_image

    good, problems = [], []
    for sample in samples:
        try:
            for image in sample.images:
                decode_image(image, draft=lambda size: (1, 1))
            for audio in sample.audios:
                load_audio(audio)
        except (ValueError, OSError) as error:
            problems.append(f"line {sample.line} (id {sample.id}): {error}")
            continue
        good.append(sample)
    return good, problems
