"""GSM8K-style final answers: the number a worked solution ends with, compared exactly.

The final answer of a text is the first number after its last "####" (the GSM8K reference format) if it has one,
else the first number after its last "answer is" that is followed by one, else the last number anywhere. Numbers lose thousands commas,
a leading "$" and a trailing period, and compare by value ("18", "18.0" and "$18" are equal).
"""

import re
from decimal import Decimal, InvalidOperation

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"answer is", re.IGNORECASE)


def final_answer(text: str) -> Decimal | None:
    """The value of the text's final answer, or None when it holds no number."""
    if "####" in text:
        found = _NUMBER.search(text.rsplit("####", 1)[1])
    else:
        phrases = [phrase.end() for phrase in _ANSWER_IS.finditer(text) if _NUMBER.search(text, phrase.end())]
        found = _NUMBER.search(text, phrases[-1]) if phrases else None
        if found is None:
            found = ([None] + list(_NUMBER.finditer(text)))[-1]
    if found is None:
        return None
    try:
        return Decimal(found.group().replace(",", ""))
    except InvalidOperation:
        return None


def exact_match(prediction: str, answers: list[str]) -> float:
    """1.0 when the prediction's final answer equals a reference's final answer, else 0.0."""
    predicted = final_answer(prediction)
    return float(predicted is not None and any(final_answer(answer) == predicted for answer in answers))
