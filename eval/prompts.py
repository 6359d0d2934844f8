"""Default prompt templates per task. `{question}` is the sample's question and `{options}` the lettered option
block ("A. ...\\nB. ..."); `--prompt` replaces the template and `--system` adds a system turn (without one, the
checkpoint's chat template adds its default system turn)."""

from .errors import RunError

DEFAULT_PROMPTS = {
    "asr": "Transcribe the speech into text.",
    "vqa": "{question}\nAnswer the question using a single word or phrase.",
    "choice": "{question}\n{options}\nAnswer with the option's letter from the given choices directly.",
    "text": '{question}\nSolve it step by step, then give the final number after "The answer is".',
}


def check_template(prompt: str) -> None:
    """A template with an unknown placeholder or a stray brace fails here, before any model is loaded."""
    try:
        prompt.format(question="", options="")
    except (KeyError, IndexError, ValueError) as error:
        raise RunError(f"--prompt {prompt!r}: only {{question}} and {{options}} can be filled in ({error})") from None
