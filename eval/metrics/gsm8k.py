"""GSM8K final answers, compared as the official grading script compares them: as strings after removing commas.

The final answer of a text is the first number after its last "####" (the GSM8K reference format) if it has one,
else the first number after its last "answer is" that is followed by one, else the last number anywhere (a chat
model seldom writes "####"). The number loses its thousands commas and is compared as written: "72" and "72.0" differ,
as they do in the official script. `numeric_match` is the lenient variant, reported under its own name: it compares
values, so "72", "72.0" and "$72" agree.
"""

import re
from decimal import Decimal, InvalidOperation

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANSWER_IS = re.compile(r"answer is", re.IGNORECASE)


def final_answer(text: str) -> str | None:
    """The text's final answer without commas, or None when it holds no number."""
    if "####" in text:
        found = _NUMBER.search(text.rsplit("####", 1)[1])
    else:
        phrases = [phrase.end() for phrase in _ANSWER_IS.finditer(text) if _NUMBER.search(text, phrase.end())]
        found = _NUMBER.search(text, phrases[-1]) if phrases else None
        if found is None:
            found = ([None] + list(_NUMBER.finditer(text)))[-1]
    return None if found is None else found.group().replace(",", "")


def _value(answer: str | None) -> Decimal | None:
    try:
        return None if answer is None else Decimal(answer)
    except InvalidOperation:
        return None


def exact_match(prediction: str, answers: list[str]) -> float:
    """1.0 when the prediction's final answer is the same string as a reference's, else 0.0 (the official rule)."""
    predicted = final_answer(prediction)
    return float(predicted is not None and any(final_answer(answer) == predicted for answer in answers))


def numeric_match(prediction: str, answers: list[str]) -> float:
    """1.0 when the prediction's final answer has the value of a reference's, else 0.0 (lenient: "72.0" is 72)."""
    predicted = _value(final_answer(prediction))
    return float(predicted is not None and any(_value(final_answer(answer)) == predicted for answer in answers))
