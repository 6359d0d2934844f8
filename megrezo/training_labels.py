"""Training labels: the loss covers the tokens of assistant turns (their text and `<|turn_end|>`), nothing else.

The turn boundaries come from rendering growing prefixes of the conversation, so any chat template that renders a
conversation's prefixes as prefixes works. This file is shipped next to a checkpoint as remote code.
"""

from collections.abc import Callable

import numpy as np
import torch

from .conversation import Conversation
from .prompt_layout import ExpandedPrompt, TokenizedPrompt

IGNORE_INDEX = -100
"""Label value that transformers' cross-entropy skips."""


def assistant_char_ranges(
    render: Callable[[Conversation, bool], str], template_messages: Conversation, rendered: str
) -> list[tuple[int, int]]:
    """(start, end) in the rendered text of each assistant turn's content and its end-of-turn marker: the text
    between the prompt that asks for the turn and the conversation that includes it. `render(messages,
    add_generation_prompt)` is the chat template."""
    ranges = []
    for index, message in enumerate(template_messages):
        if message["role"] != "assistant":
            continue
        before = render(template_messages[:index], True)
        through = render(template_messages[: index + 1], False)
        if not (through.startswith(before) and rendered.startswith(through)):
            raise ValueError(
                "the chat template does not render a conversation's prefixes as prefixes; cannot place labels"
            )
        ranges.append((len(before), len(through)))
    return ranges


def assistant_labels(
    tokens: TokenizedPrompt, prompt: ExpandedPrompt, assistant_ranges: list[tuple[int, int]]
) -> torch.Tensor:
    """[L] token ids where a token starts inside an assistant turn and outside any media layout, else -100."""
    starts = tokens.token_starts
    keep = np.zeros(len(tokens.ids), dtype=bool)
    for start, end in assistant_ranges:
        keep |= (starts >= prompt.moved(start)) & (starts < prompt.moved(end))
    for start, end in prompt.media_ranges:
        keep &= ~((starts >= start) & (starts < end))
    labels = torch.where(torch.from_numpy(keep), tokens.ids, torch.full_like(tokens.ids, IGNORE_INDEX))
    return labels.repeat_interleave(tokens.repeats)
