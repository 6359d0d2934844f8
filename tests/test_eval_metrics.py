"""The evaluation metrics against values computed by hand, including the edge cases each benchmark defines."""

import pytest

from eval.metrics.anls import anls
from eval.metrics.asr import error_rate, normalize_transcript
from eval.metrics.choice import extract_letter, rotate_options
from eval.metrics.gsm8k import exact_match, numeric_match
from eval.metrics.relaxed import relaxed_accuracy
from eval.metrics.vqa import normalize_answer, vqa_accuracy
from eval.requests import expand
from eval.samples import Sample
from eval.scoring import score

# ---------------------------------------------------------------- VQAv2 / TextVQA


@pytest.mark.parametrize(
    ("matches", "expected"),
    # 10 annotators, k of them gave the predicted answer. Leaving out one of the k leaves k-1 matches, leaving out
    # one of the others leaves k: accuracy = (k * min((k-1)/3, 1) + (10-k) * min(k/3, 1)) / 10.
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_vqa_accuracy_follows_the_three_annotator_rule(matches, expected):
    answers = ["2"] * matches + ["3"] * (10 - matches)
    assert vqa_accuracy("2", answers) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("prediction", "answer"),
    [
        ("Two", "2"),  # number words become digits
        ("The red car.", "red car"),  # articles and a final period go
        ("dont", "don't"),  # contractions get their apostrophe back
        ("1,000", "1000"),  # a digit-comma-digit group loses its comma
        ("yes!", "yes"),
        ("New York\n", "new york"),
    ],
)
def test_vqa_normalisation_makes_equal_answers_match(prediction, answer):
    assert normalize_answer(prediction) == normalize_answer(answer)
    assert vqa_accuracy(prediction, [answer]) == 1.0


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("im", "im"),  # the official table's key is "Im", never matched after lower-casing
        ("Ive", "ive"),
        ("shed", "shed"),  # only "shed've" is in the table
        ("shed've", "she'd've"),
        ("somebody'd", "somebodyd"),  # the table's own entry
        ("couldn'tve", "couldn't've"),
        ("dont", "don't"),
        ("whats", "what's"),
    ],
)
def test_vqa_contractions_are_the_official_table(text, normalized):
    assert normalize_answer(text) == normalized


def test_vqa_accuracy_with_unmapped_contractions():
    """"im here" does not become "i'm here": 3 annotators wrote "im here", 7 "i'm here", so the prediction "im here"
    matches 3 (score 0.9 by the leave-one-out rule) and "I'm here" matches 7 (score 1)."""
    answers = ["im here"] * 3 + ["i'm here"] * 7
    assert vqa_accuracy("im here", answers) == pytest.approx(0.9)
    assert vqa_accuracy("I'm here", answers) == 1.0


def test_vqa_normalisation_keeps_what_differs():
    assert normalize_answer("3.5") == "3.5"  # a period before a digit stays
    assert normalize_answer("black-and-white") == "black and white"  # a hyphen inside a word becomes a space
    assert vqa_accuracy("3.5", ["35"]) == 0.0
    assert vqa_accuracy("blue", ["red"]) == 0.0


# ---------------------------------------------------------------- DocVQA ANLS


def test_anls_scores_similarity_above_the_threshold():
    assert anls("helo", ["hello"]) == pytest.approx(0.8)  # 1 edit over 5 characters
    assert anls("abcx", ["abcd"]) == pytest.approx(0.75)
    assert anls("  Hello   World ", ["hello world"]) == 1.0  # case and whitespace do not count


def test_anls_threshold_is_exclusive_at_one_half():
    assert anls("abxx", ["abcd"]) == 0.0  # distance 2/4 = 0.5: no credit
    assert anls("ax", ["ab"]) == 0.0
    assert anls("xyz", ["abc"]) == 0.0


def test_anls_takes_the_best_reference():
    assert anls("helo", ["goodbye", "hello"]) == pytest.approx(0.8)


# ---------------------------------------------------------------- ChartQA relaxed accuracy


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("104", "100", 1.0),  # 4 % off
        ("105", "100", 1.0),  # exactly 5 %
        ("105.1", "100", 0.0),
        ("45%", "0.45", 1.0),  # a percentage is read as a fraction
        ("0.46", "45%", 1.0),  # 2.2 % off 0.45
        ("45", "45%", 0.0),  # 45 is not 0.45
        ("45%%", "0.45", 1.0),  # every trailing "%" goes, as in the official rstrip("%")
        ("0.45", "45%%%", 1.0),
        ("0", "0", 1.0),  # a zero reference falls back to exact match
        ("0.0", "0", 0.0),
        ("Yes", "yes", 1.0),  # text: case-insensitive exact match
        ("Yes.", "yes", 0.0),
    ],
)
def test_relaxed_accuracy(prediction, answer, expected):
    assert relaxed_accuracy(prediction, [answer]) == expected


# ---------------------------------------------------------------- multiple choice

OPTIONS = ["cat", "dog", "bird", "fish"]


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("B", "B"),
        ("(C) bird", "C"),
        ("D. fish", "D"),
        ("The answer is D.", "D"),
        ("Answer: c", "C"),
        ("I think B is right", "B"),
        ("A bird is shown.", "C"),  # "A" before a word is the article; the option text decides
        ("dog", "B"),
        ("It is a dog, not a cat", None),  # two option texts: undecided
        ("A or B", None),  # two letters named: no pick
        ("B, C", None),
        ("B or C.", None),
        ("The answer is B, not A.", None),
        ("A and B are both wrong", None),
        ("A dog.", "B"),  # the article before a lower-case word is still not an option
        ("E", None),  # not an option
        ("no idea", None),
    ],
)
def test_letter_extraction(reply, letter):
    assert extract_letter(reply, OPTIONS) == letter


def test_rotation_moves_the_answer_letter():
    assert rotate_options(OPTIONS, "C", 1) == (["dog", "bird", "fish", "cat"], "B")
    assert rotate_options(OPTIONS, "A", 1) == (["dog", "bird", "fish", "cat"], "D")
    assert rotate_options(OPTIONS, "C", 0) == (OPTIONS, "C")


def test_circular_accuracy_needs_every_rotation_right():
    """Sample x is answered right in rotations 0 and 1 but wrong in 2; sample y right in all three. Plain accuracy
    (rotation 0) is 2/2, circular accuracy 1/2."""
    samples = [Sample("x", ["A"], "?", choices=["p", "q", "r"]), Sample("y", ["B"], "?", choices=["p", "q", "r"])]
    requests = expand(samples, circular=True)
    assert [(r.key, r.answers[0]) for r in requests] == [
        ("x#shift0", "A"), ("x#shift1", "C"), ("x#shift2", "B"), ("y#shift0", "B"), ("y#shift1", "A"),
        ("y#shift2", "C"),
    ]
    predictions = ["A", "The answer is C", "A", "B", "(A)", "q"]  # y rotated by 2 is r, p, q: "q" is C
    metrics, items = score("choice", requests, predictions)
    assert [item.score for item in items] == [1, 1, 0, 1, 1, 1]
    assert metrics["headline"] == {"accuracy": 100.0, "circular_accuracy": 50.0}


# ---------------------------------------------------------------- GSM8K

REFERENCE = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether she sold 48+24 = <<48+24=72>>72 clips.\n#### 72"


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("She sold 48 and 24, so 72 in all. The answer is 72.", 1.0),
        ("The answer is 72.0", 0.0),  # the official comparison is of strings: "72.0" is not "72"
        ("The answer is 72 clips, sold in 2 months", 1.0),  # the number right after "answer is"
        ("48 + 24 = 72", 1.0),  # no phrase: the last number
        ("The answer is 24.", 0.0),
        ("I cannot tell.", 0.0),
    ],
)
def test_gsm8k_final_answer_exact_match(prediction, expected):
    assert exact_match(prediction, [REFERENCE]) == expected


def test_gsm8k_numbers_lose_commas_and_dollar_signs():
    assert exact_match("The answer is $1,000.", ["#### 1000"]) == 1.0
    assert exact_match("The answer is -3", ["#### -3"]) == 1.0
    assert exact_match("#### 1,234,567", ["#### 1234567"]) == 1.0


@pytest.mark.parametrize(
    ("prediction", "official", "lenient"),
    [("The answer is 72.0", 0.0, 1.0), ("#### 72.00", 0.0, 1.0), ("#### 072", 0.0, 1.0), ("#### 72", 1.0, 1.0),
     ("#### 73", 0.0, 0.0), ("no number", 0.0, 0.0)],
)
def test_gsm8k_numeric_match_is_the_lenient_variant(prediction, official, lenient):
    assert exact_match(prediction, ["#### 72"]) == official
    assert numeric_match(prediction, ["#### 72"]) == lenient


def test_text_task_scores_officially_by_default_and_leniently_by_name():
    requests = expand([Sample("a", ["#### 72"], "?"), Sample("b", ["#### 5"], "?")], circular=False)
    predictions = ["The answer is 72.0", "The answer is 5"]
    assert score("text", requests, predictions)[0]["headline"] == {"exact_match": 50.0}
    assert score("text", requests, predictions, "numeric_match")[0]["headline"] == {"numeric_match": 100.0}
    with pytest.raises(ValueError, match="--metric anls is not a metric of the text task"):
        score("text", requests, predictions, "anls")


# ---------------------------------------------------------------- speech recognition


def test_english_wer_after_the_whisper_normaliser():
    assert normalize_transcript("Mr. Smith paid $20 for two apples.", "en") == \
        normalize_transcript("mister smith paid twenty dollars for 2 apples", "en")
    result = error_rate(["Mr. Smith paid $20 for two apples."], ["mister smith paid twenty dollars for 2 apples"], "en")
    assert result["wer"] == 0.0


def test_wer_is_corpus_level():
    """6 reference words with 2 substitutions, then 2 words both deleted: 4 / 8 = 50 %, not the mean of the
    per-utterance rates (33 % and 100 %)."""
    result = error_rate(["The cat sat on the mat.", "hello world"], ["the cat sat on a hat", ""], "en")
    assert result["metric"] == "wer"
    assert result["wer"] == pytest.approx(0.5)
    assert (result["substitutions"], result["deletions"], result["insertions"], result["reference_units"]) == (
        2, 2, 0, 8)


def test_chinese_cer_after_traditional_to_simplified_and_punctuation_removal():
    assert error_rate(["我們喜歡學習。"], ["我们喜欢学习"], "zh")["cer"] == 0.0
    assert error_rate(["今天天气很好！"], ["今天 天气，很好"], "zh")["cer"] == 0.0
    result = error_rate(["今天天氣很好！"], ["今天天气不好"], "zh")  # one character of six differs
    assert result["metric"] == "cer"
    assert result["cer"] == pytest.approx(1 / 6)


def test_chinese_cer_keeps_text_in_brackets():
    """Only punctuation marks go: "(北京)" keeps 北京. Reference 我住在北京(首都) has 7 characters once the brackets
    go; the hypothesis lacks 首都: 2 deletions, CER 2/7. (Whisper's basic normaliser deletes "(首都)" and would give
    0.)"""
    assert normalize_transcript("我住在北京（首都）。", "zh") == "我住在北京首都"
    assert normalize_transcript("【新闻】今天, 天氣「很好」!", "zh") == "新闻今天天气很好"
    result = error_rate(["我住在北京(首都)"], ["我住在北京"], "zh")
    assert (result["cer"], result["deletions"], result["reference_units"]) == (pytest.approx(2 / 7), 2, 7)


def test_references_that_normalise_to_nothing_are_counted_not_scored():
    """Whisper's normaliser drops bracketed annotations, so "[noise]" leaves no word to score against."""
    result = error_rate(["[noise]", "good morning"], ["anything", "good morning"], "en")
    assert result["empty_references"] == 1 and result["items"] == 1 and result["wer"] == 0.0
