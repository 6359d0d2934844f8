"""DocVQA ANLS: average normalised Levenshtein similarity with the 0.5 threshold.

Per item, the best over the reference answers of 1 - distance / max(length): texts are lower-cased, stripped and
their inner whitespace collapsed first; a similarity whose normalised distance is 0.5 or more counts as 0, so a
wrong answer earns nothing for sharing a few characters with the right one.
"""

from rapidfuzz.distance import Levenshtein

THRESHOLD = 0.5


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


def anls(prediction: str, answers: list[str], threshold: float = THRESHOLD) -> float:
    """The item's score in [0, 1]."""
    predicted = _normalize(prediction)
    best = 0.0
    for answer in answers:
        reference = _normalize(answer)
        longest = max(len(predicted), len(reference))
        distance = Levenshtein.distance(predicted, reference) / longest if longest else 0.0
        best = max(best, 1.0 - distance if distance < threshold else 0.0)
    return best
