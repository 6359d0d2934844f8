"""The rules for the generation settings a user sets, checked before anything runs.

transformers takes `temperature=inf` or `nan` and then samples from broken probabilities, accepts `top_p=1.5` and a
negative `top_k`, and answers `temperature='0.5'` with a message about positive floats. `model.chat` and the Gradio
app check the same rules here and name the setting (or the app's control) that is wrong.
"""

import math
import numbers

RULES: dict[str, tuple[str, bool, float, float, bool, bool]] = {
    # name: (what it must be, integer, lowest, highest, lowest allowed, highest allowed)
    "temperature": ("a finite number >= 0 (0 decodes greedily)", False, 0.0, math.inf, True, False),
    "top_p": ("a number in (0, 1]", False, 0.0, 1.0, False, True),
    "top_k": ("an integer >= 0 (0 turns it off)", True, 0.0, math.inf, True, False),
    "repetition_penalty": ("a finite number > 0 (1 turns it off)", False, 0.0, math.inf, False, False),
    "max_new_tokens": ("a positive integer", True, 1.0, math.inf, True, False),
}
"""The settings with a rule, and the rule."""


def check_setting(name: str, value: object, label: str | None = None) -> int | float:
    """`value` as a number when it follows the rule of setting `name`, else a ValueError that names `label` (the
    setting's name by default) and what it must be. A whole float (5.0) passes for an integer setting."""
    meaning, integer, lowest, highest, lowest_allowed, highest_allowed = RULES[name]
    label = label or name
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{label} must be {meaning}, got {value!r} ({type(value).__name__})")
    number = float(value)
    too_low = number < lowest or (number == lowest and not lowest_allowed)
    too_high = number > highest or (number == highest and not highest_allowed)
    if not math.isfinite(number) or too_low or too_high or (integer and not number.is_integer()):
        raise ValueError(f"{label} must be {meaning}, got {value!r}")
    return int(number) if integer else number


def check_settings(settings: dict[str, object]) -> dict[str, object]:
    """`settings` with every setting that has a rule checked and made a plain int or float; None means "not set"
    and passes as it is."""
    return {
        name: check_setting(name, value) if name in RULES and value is not None else value
        for name, value in settings.items()
    }
