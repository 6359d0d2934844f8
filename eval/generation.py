"""The generation settings both backends receive, so HF and vLLM answer the same question the same way.

Decoding is always greedy. The repetition penalty defaults to 1.0 (off): the two backends currently apply a penalty
other than 1.0 to different sets of tokens, so with one set their predictions can differ; with 1.0 they are the
same tokens. The authors' chat defaults use 1.2; pass `--repetition_penalty 1.2` to evaluate with those.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 512
    repetition_penalty: float = 1.0
