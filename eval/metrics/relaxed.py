"""ChartQA relaxed accuracy: numbers may be off by up to 5 % of the reference; other answers must match exactly.

Following the ChartQA paper's definition as published with Pix2Struct: an answer ending in "%" loses every trailing
"%" and is read as that percentage divided by 100 ("45%%" is 0.45), so "45%" and "0.45" agree and "45%" and "45" do not; a reference of 0 or a non-numeric
reference falls back to a case-insensitive exact match. Texts are stripped of surrounding whitespace first. With
several references the best one counts.
"""

MAX_RELATIVE_CHANGE = 0.05


def _to_number(text: str) -> float | None:
    try:
        return float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return None


def _relaxed_match(prediction: str, target: str) -> bool:
    predicted, expected = _to_number(prediction), _to_number(target)
    if predicted is not None and expected:
        return abs(predicted - expected) / abs(expected) <= MAX_RELATIVE_CHANGE
    return prediction.lower() == target.lower()


def relaxed_accuracy(prediction: str, answers: list[str]) -> float:
    """1.0 when the prediction matches any reference in the relaxed sense, else 0.0."""
    return float(any(_relaxed_match(prediction.strip(), answer.strip()) for answer in answers))
