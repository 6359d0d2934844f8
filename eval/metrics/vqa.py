"""VQAv2 / TextVQA accuracy with the official answer normalisation.

Normalisation (the VQA evaluation's answer processing): newlines and tabs become spaces; punctuation is removed, or
replaced by a space where it does not touch a space and the text has no digit-comma-digit group; a period is
removed unless a digit follows it; then, word by word, lower case, number words up to ten become digits, the
articles a/an/the are dropped and the contractions of the official table get their apostrophes back ("dont" ->
"don't"; the table is used as published, so "im" and "shed" stay as they are).
Both the prediction and every annotator answer are normalised.

Accuracy: an answer that k annotators gave scores min(k / 3, 1), averaged over the 10 leave-one-annotator-out
subsets as the evaluation server does, so with 10 answers 1 match scores 0.3, 2 score 0.6, 3 score 0.9 and 4 or
more score 1. An item with a single reference answer is scored by exact match after normalisation.
"""

import re

PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = {"a", "an", "the"}
CONTRACTION_OF = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
"""The official evaluation's contraction table, entry for entry, quirks included: it is looked up after lower-casing,
so its capitalised keys ("Im", "Ive", ...) never apply, "shed" is not mapped (only "shed've"), and "somebody'd"
becomes "somebodyd"."""
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
