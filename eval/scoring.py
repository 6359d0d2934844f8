"""From predictions to metrics, per task: which benchmark convention scores an item, and how items add up.

Headline figures are percentages, as in the published tables: accuracies (higher is better) and error rates (lower
is better). Every figure is also given per `subset` when the data labels subsets.
"""

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from .metrics.anls import anls
from .metrics.asr import error_rate, normalize_transcript
from .metrics.choice import extract_letter
from .metrics.gsm8k import exact_match, numeric_match
from .metrics.relaxed import relaxed_accuracy
from .metrics.vqa import vqa_accuracy
from .requests import Request

TASKS = ("asr", "vqa", "choice", "text")
VQA_METRICS: dict[str, Callable[[str, list[str]], float]] = {
    "vqa_accuracy": vqa_accuracy,
    "anls": anls,
    "relaxed_accuracy": relaxed_accuracy,
}
"""`--metric` choices of the vqa task: VQAv2/TextVQA, DocVQA, ChartQA."""
TEXT_METRICS: dict[str, Callable[[str, list[str]], float]] = {"exact_match": exact_match, "numeric_match": numeric_match}
"""`--metric` choices of the text task: GSM8K's official string comparison, or the lenient comparison of values."""
METRICS_OF_TASK = {"vqa": VQA_METRICS, "text": TEXT_METRICS}
"""The tasks that take `--metric`; the first entry of each is the default."""


@dataclass
class ScoredItem:
    key: str
    prediction: str
    answers: list[str]
    score: float | None
    """1/0 or a fraction for accuracy-type tasks; None for asr, which is scored over the whole corpus."""
    extracted: str | None = None
    """What was compared: the option letter found (choice) or the normalised transcript (asr)."""


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 4)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _by_subset(requests: list[Request]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, request in enumerate(requests):
        if request.sample.subset is not None:
            groups[request.sample.subset].append(index)
    return dict(groups)


def _asr(requests: list[Request], predictions: list[str], default_language: str) -> tuple[dict, list[ScoredItem]]:
    def rates(indices: list[int]) -> dict:
        by_language: dict[str, list[int]] = defaultdict(list)
        for index in indices:
            by_language[requests[index].sample.language or default_language].append(index)
        result = {}
        for language, members in sorted(by_language.items()):
            figures = error_rate([requests[i].answers[0] for i in members], [predictions[i] for i in members],
                                 language)
            name = figures["metric"]
            result[f"{name}_{language}"] = {**figures, name: _percent(figures[name])}
        return result

    everything = rates(list(range(len(requests))))
    metrics = {
        "headline": {key: figures[figures["metric"]] for key, figures in everything.items()},
        "details": everything,
        "by_subset": {
            subset: {key: figures[figures["metric"]] for key, figures in rates(members).items()}
            for subset, members in _by_subset(requests).items()
        },
        "lower_is_better": True,
    }
    items = []
    for request, prediction in zip(requests, predictions, strict=True):
        normalized = normalize_transcript(prediction, request.sample.language or default_language)
        items.append(ScoredItem(request.key, prediction, request.answers, None, normalized))
    return metrics, items


def _accuracy(requests: list[Request], items: list[ScoredItem], name: str) -> dict:
    scores = [item.score for item in items]
    return {
        "headline": {name: _percent(_mean(scores))},
        "by_subset": {
            subset: {name: _percent(_mean([scores[i] for i in members]))}
            for subset, members in _by_subset(requests).items()
        },
        "lower_is_better": False,
    }


def _choice(requests: list[Request], predictions: list[str]) -> tuple[dict, list[ScoredItem]]:
    """Accuracy on the original option order (rotation 0), and, when rotations were asked, circular accuracy: a
    sample counts only if every rotation was answered correctly."""
    items = []
    for request, prediction in zip(requests, predictions, strict=True):
        letter = extract_letter(prediction, request.choices)
        items.append(ScoredItem(request.key, prediction, request.answers, float(letter == request.answers[0]),
                                letter))
    original = [index for index, request in enumerate(requests) if request.shift == 0]
    metrics = _accuracy([requests[i] for i in original], [items[i] for i in original], "accuracy")
    metrics["details"] = {"unparsed": sum(item.extracted is None for item in items)}
    if any(request.shift for request in requests):
        all_correct: dict[str, bool] = {}
        subset_of: dict[str, str | None] = {}
        for request, item in zip(requests, items, strict=True):
            all_correct[request.sample.id] = all_correct.get(request.sample.id, True) and item.score == 1.0
            subset_of[request.sample.id] = request.sample.subset
        metrics["headline"]["circular_accuracy"] = _percent(_mean([float(ok) for ok in all_correct.values()]))
        for subset in metrics["by_subset"]:
            members = [float(ok) for key, ok in all_correct.items() if subset_of[key] == subset]
            metrics["by_subset"][subset]["circular_accuracy"] = _percent(_mean(members))
    return metrics, items


def check_metric(task: str, metric: str | None) -> None:
    """A `--metric` belongs to one task; naming another task's is a mistake, not something to ignore."""
    if metric is None or metric in METRICS_OF_TASK.get(task, {}):
        return
    if task not in METRICS_OF_TASK:
        raise ValueError(f"--metric {metric}: the {task} task has one metric and takes no --metric")
    raise ValueError(f"--metric {metric} is not a metric of the {task} task: use one of "
                     f"{', '.join(METRICS_OF_TASK[task])}")


def score(task: str, requests: list[Request], predictions: list[str], metric: str | None = None,
          default_language: str = "en") -> tuple[dict, list[ScoredItem]]:
    """Metrics (headline percentages, per-subset figures, details) and the scored items, in request order.
    `metric` picks among a task's METRICS_OF_TASK (default: the first, the benchmark's official one)."""
    check_metric(task, metric)
    if task == "asr":
        return _asr(requests, predictions, default_language)
    if task == "choice":
        return _choice(requests, predictions)
    name = metric or next(iter(METRICS_OF_TASK[task]))
    scorer = METRICS_OF_TASK[task][name]
    items = [ScoredItem(request.key, prediction, request.answers, scorer(prediction, request.answers))
             for request, prediction in zip(requests, predictions, strict=True)]
    return _accuracy(requests, items, name), items
