"""What the model is asked: one request per sample, or per option rotation of a multiple-choice sample when the
evaluation is circular. A request's key is its id in predictions.jsonl."""

from dataclasses import dataclass

from .metrics.choice import format_options, rotate_options
from .samples import Sample

SHIFT_SEPARATOR = "#shift"


@dataclass
class Request:
    key: str
    sample: Sample
    choices: list[str]
    answers: list[str]
    shift: int = 0


def expand(samples: list[Sample], circular: bool) -> list[Request]:
    """Requests in data order. With `circular`, a sample with N choices becomes N requests, rotated 0..N-1 places,
    each with the letter its answer has after the rotation."""
    requests = []
    for sample in samples:
        if not (circular and sample.choices):
            requests.append(Request(sample.id, sample, sample.choices, sample.answers))
            continue
        for shift in range(len(sample.choices)):
            rotated, letter = rotate_options(sample.choices, sample.answers[0], shift)
            requests.append(Request(f"{sample.id}{SHIFT_SEPARATOR}{shift}", sample, rotated, [letter], shift))
    return requests


def build_messages(request: Request, prompt: str, system: str | None) -> list[dict]:
    """`model.chat` messages: an optional system turn, then one user turn with the prompt template filled in
    (`{question}`, `{options}`) and the sample's images and audio as paths."""
    text = prompt.format(question=request.sample.question, options=format_options(request.choices))
    messages = [{"role": "system", "content": system}] if system else []
    content: dict = {"text": text}
    if request.sample.images:
        content["image"] = [str(path) for path in request.sample.images]
    if request.sample.audios:
        content["audio"] = [str(path) for path in request.sample.audios]
    messages.append({"role": "user", "content": content if len(content) > 1 else text})
    return messages
