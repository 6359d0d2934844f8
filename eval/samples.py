"""The evaluation JSONL: one sample per line, checked line by line before any model is loaded.

    {"id": "q1", "question": "What colour is the car?", "image": "images/1.jpg", "answer": ["red", "red", ...]}
    {"id": "a1", "audio": "audio/1.wav", "answer": "the reference transcript", "language": "en"}
    {"id": "c1", "question": "Which animal?", "image": "x.png", "choices": ["cat", "dog"], "answer": "B"}

Fields: `id` (unique; default: the line number), `question` (text; optional for `asr`), `image` and `audio`
(a path or a list of paths, relative to the JSONL's folder), `answer` (the reference: a string or a list of
accepted answers, e.g. the 10 VQA annotators), `choices` (a list of option texts, lettered A, B, ... in order; the
answer is then a letter), `language` (`asr`: "en", "zh", ...) and `subset` (any label; metrics are also broken down
by it).
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from .metrics.choice import LETTERS


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


class DataError(ValueError):
    """Problems found in a data file, one line each, with their line numbers."""

    def __init__(self, path: Path, problems: list[str]):
        self.problems = problems
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
    sample = Sample(id=str(record.get("id", line_number)), answers=_answers(record["answer"]))
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


def read_samples(path: str | Path) -> list[Sample]:
    """Every sample of the file; raises DataError listing every bad line (bad JSON, missing media, no reference,
    a repeated id) so all can be fixed at once."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, ["file not found"])
    samples, problems, seen = [], [], {}
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            sample = parse_sample(json.loads(line), line_number, path.parent)
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
