"""Speech recognition error rates as Fleurs, WenetSpeech and LibriSpeech results are reported.

English: WER after Whisper's English normaliser (spelling, numbers, contractions, punctuation). Chinese: CER after
Traditional->Simplified conversion (OpenCC `t2s`), lower-casing and removal of the punctuation marks (Unicode
category P) and all spaces, so characters are the units; text inside brackets is kept ("北京(首都)" scores as
"北京首都"), where Whisper's basic normaliser would delete it. Other languages: WER after Whisper's basic
normaliser.
Rates are corpus-level: all edits over all reference units, not a mean of per-utterance rates.
"""

import unicodedata
from functools import cache

import jiwer

CHARACTER_LANGUAGES = {"zh"}
"""Languages scored by character error rate; the rest by word error rate."""


@cache
def _english_normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


@cache
def _basic_normalizer():
    from whisper_normalizer.basic import BasicTextNormalizer

    return BasicTextNormalizer()


@cache
def _to_simplified():
    import opencc

    return opencc.OpenCC("t2s")


def normalize_transcript(text: str, language: str) -> str:
    """The text an error rate is computed on: words separated by single spaces (English, others) or characters
    with no spaces (Chinese)."""
    if language == "en":
        return " ".join(_english_normalizer()(text).split())
    if language == "zh":
        simplified = _to_simplified().convert(text).lower()
        return "".join(char for char in simplified if not unicodedata.category(char).startswith("P") and not char.isspace())
    return " ".join(_basic_normalizer()(text).split())


def error_rate(references: list[str], hypotheses: list[str], language: str) -> dict:
    """Corpus error rate (`wer` or `cer`, a fraction) with its edit counts, after normalisation. Pairs whose
    reference normalises to nothing cannot be scored; they are counted in `empty_references` and left out."""
    pairs = [
        (normalize_transcript(reference, language), normalize_transcript(hypothesis, language))
        for reference, hypothesis in zip(references, hypotheses, strict=True)
    ]
    scored = [(reference, hypothesis) for reference, hypothesis in pairs if reference]
    name = "cer" if language in CHARACTER_LANGUAGES else "wer"
    result: dict = {"metric": name, "items": len(scored), "empty_references": len(pairs) - len(scored)}
    if not scored:
        return {**result, name: None}
    references_used = [reference for reference, _ in scored]
    hypotheses_used = [hypothesis for _, hypothesis in scored]
    if name == "cer":
        output = jiwer.process_characters(references_used, hypotheses_used)
    else:
        output = jiwer.process_words(references_used, hypotheses_used)
    units = output.hits + output.substitutions + output.deletions
    return {
        **result,
        name: (output.substitutions + output.deletions + output.insertions) / units,
        "reference_units": units,
        "substitutions": output.substitutions,
        "deletions": output.deletions,
        "insertions": output.insertions,
    }
