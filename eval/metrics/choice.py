"""Multiple-choice answers (MMBench, AI2D, MMStar, MMMU style): the option letter a reply names, and the option
shifts of MMBench's circular evaluation.

A reply that names two or more option letters on their own ("A or B", "B, C", "not A but B") picks none, as in
MMBench's official matching, which accepts a letter only when it is the one option letter in the reply. Otherwise
letter extraction, in order, stops at the first rule that gives exactly one valid letter:
1. the reply starts with the letter, alone or as "B.", "B)", "(B)", "B:" or "B," (possibly followed by text);
2. "answer is B", "answer: B", "option B" or "choice B" anywhere (the last such phrase counts);
3. exactly one valid letter stands alone as a word in the reply ("A" or "I" before a lower-case word other than
   "or", "and" or "nor" is read as the article or pronoun, not as an option);
4. the reply, lower-cased and without surrounding punctuation, equals one option's text, or contains exactly one
   option's text.
Otherwise the reply names no option and scores 0 (reported as unparsed). No model is asked to judge.

Circular evaluation: an item with N options is asked N times, the options rotated by 0..N-1 places; it counts as
correct only when every rotation is answered correctly, which removes the reward for always picking one position.
"""

import re
import string

LETTERS = string.ascii_uppercase
_LEADING = re.compile(r"^\s*\(?([A-Z])(?:\)|\.|:|,|\s*$)")
_PHRASE = re.compile(r"(?:answer\s*(?:is|:)|option|choice)\s*:?\s*\(?([A-Z])\b", re.IGNORECASE)
_ALONE = re.compile(r"(?<![A-Za-z'])([A-Z])(?![A-Za-z'])")
_WORD_LETTERS = {"A", "I"}
"""Capital letters that are also English words."""
_AS_A_WORD = re.compile(r" (?!(?:or|and|nor)\b)[a-z]")
"""What follows "A" or "I" when it is the article or pronoun: a lower-case word that does not join options."""


def _clean(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .,:;!?\"'()")


def extract_letter(reply: str, options: list[str]) -> str | None:
    """The letter of the option the reply names, or None (see the module docstring for the rules)."""
    valid = LETTERS[: len(options)]
    alone = {
        match.group(1)
        for match in _ALONE.finditer(reply)
        if match.group(1) in valid
        and not (match.group(1) in _WORD_LETTERS and _AS_A_WORD.match(reply[match.end():]))
    }
    if len(alone) > 1:
        return None
    leading = _LEADING.match(reply)
    if leading and leading.group(1) in valid:
        return leading.group(1)
    phrases = [letter.upper() for letter in _PHRASE.findall(reply) if letter.upper() in valid]
    if phrases:
        return phrases[-1]
    if len(alone) == 1:
        return alone.pop()
    cleaned = _clean(reply)
    texts = [_clean(option) for option in options]
    if cleaned in texts and texts.count(cleaned) == 1:
        return valid[texts.index(cleaned)]
    contained = [index for index, text in enumerate(texts) if text and text in cleaned]
    if len(contained) == 1:
        return valid[contained[0]]
    return None


def rotate_options(options: list[str], answer: str, shift: int) -> tuple[list[str], str]:
    """Options moved `shift` places to the left (option shift+0 becomes A) and the letter the answer then has."""
    count = len(options)
    rotated = options[shift:] + options[:shift]
    answer_index = (LETTERS.index(answer) - shift) % count
    return rotated, LETTERS[answer_index]


def format_options(options: list[str]) -> str:
    """"A. first\nB. second ..." as the option block of a prompt."""
    return "\n".join(f"{LETTERS[index]}. {option}" for index, option in enumerate(options))
