"""VQAv2 / TextVQA accuracy with the official answer normalisation.

Normalisation (the VQA evaluation's answer processing): newlines and tabs become spaces; punctuation is removed, or
replaced by a space where it does not touch a space and the text has no digit-comma-digit group; a period is
removed unless a digit follows it; then, word by word, lower case, number words up to ten become digits, the
articles a/an/the are dropped and apostrophe-less contractions get their apostrophes back ("dont" -> "don't").
Both the prediction and every annotator answer are normalised.

Accuracy: an answer that k annotators gave scores min(k / 3, 1), averaged over the 10 leave-one-annotator-out
subsets as the evaluation server does, so with 10 answers 1 match scores 0.3, 2 score 0.6, 3 score 0.9 and 4 or
more score 1. An item with a single reference answer is scored by exact match after normalisation.
"""

import itertools
import re

PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = {"a", "an", "the"}
CONTRACTIONS = """ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
haven't he'd he'd've he's how'd how'll how's i'd i'd've i'm i've isn't it'd it'd've it'll let's ma'am mightn't
mightn't've might've mustn't must've needn't not've o'clock oughtn't shan't she'd've she'd she's should've
shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's
something'd something'd've something'll that's there'd there'd've there're there's they'd they'd've they'll
they're they've wasn't we'd've we'd we're we've weren't what'll what're what's what've when's where'd where's
where've who'd who'd've who'll who're who's who've why'll why're why's won't would've wouldn't wouldn't've y'all
y'all'll y'all'd've you'd you'd've you'll you're you've""".split()


def _spellings_without_apostrophes(contraction: str) -> set[str]:
    """Every spelling of the contraction with some (at least one) of its apostrophes left out."""
    parts = contraction.split("'")
    spellings = set()
    for joins in itertools.product(["'", ""], repeat=len(parts) - 1):
        spelling = parts[0] + "".join(join + part for join, part in zip(joins, parts[1:], strict=True))
        if spelling != contraction:
            spellings.add(spelling)
    return spellings


CONTRACTION_OF = {spelling: c for c in CONTRACTIONS for spelling in _spellings_without_apostrophes(c)}
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")


def _strip_punctuation(text: str) -> str:
    result = text
    keep_together = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        if keep_together or f"{mark} " in text or f" {mark}" in text:
            result = result.replace(mark, "")
        else:
            result = result.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", result)


def _normalize_words(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTION_OF.get(word, word))
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """The official normalised form of a VQA answer."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _normalize_words(_strip_punctuation(text))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Accuracy of one prediction against the annotators' answers (see the module docstring)."""
    predicted = normalize_answer(prediction)
    given = [normalize_answer(answer) for answer in answers]
    if len(given) == 1:
        return float(predicted == given[0])
    scores = []
    for left_out in range(len(given)):
        matches = sum(answer == predicted for index, answer in enumerate(given) if index != left_out)
        scores.append(min(matches / 3, 1.0))
    return sum(scores) / len(scores)
