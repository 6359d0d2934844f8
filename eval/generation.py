"""The generation settings both backends receive, so HF and vLLM answer the same question the same way.

Decoding is always greedy. The repetition penalty defaults to 1.0 (off), the usual setting for scoring: a penalty
pushes away a correct answer that repeats a word of the question. The authors' chat setting is 1.2
(`--repetition_penalty 1.2`). Both backends get the same values and then give the same replies (tested with 1.0 and
1.2).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 512
    repetition_penalty: float = 1.0
