"""Generation settings that break their rule are refused by name before anything runs, in `model.chat` (the Gradio
app's controls are tested in test_gradio_app.py). Without the check transformers samples from broken probabilities
at `temperature=inf` or `nan`, and takes `top_p=1.5` and a negative `top_k`."""

import math

import pytest

from megrezo.sampling_settings import check_setting

TEXT = [{"role": "user", "content": "Hi"}]

BAD = [
    ({"temperature": math.inf}, r"temperature must be a finite number >= 0 \(0 decodes greedily\), got inf"),
    ({"temperature": math.nan}, r"temperature must be a finite number >= 0 .*, got nan"),
    ({"temperature": -0.5}, r"temperature must be .*, got -0\.5"),
    ({"temperature": "0.5"}, r"temperature must be a finite number >= 0 .*, got '0\.5' \(str\)"),
    ({"top_p": 1.5}, r"top_p must be a number in \(0, 1\], got 1\.5"),
    ({"top_p": 0}, r"top_p must be a number in \(0, 1\], got 0"),
    ({"top_k": -1}, r"top_k must be an integer >= 0 \(0 turns it off\), got -1"),
    ({"top_k": 2.5}, r"top_k must be an integer >= 0 .*, got 2\.5"),
    ({"repetition_penalty": 0}, r"repetition_penalty must be a finite number > 0 \(1 turns it off\), got 0"),
    ({"repetition_penalty": math.nan}, r"repetition_penalty must be .*, got nan"),
    ({"max_new_tokens": 2.5}, r"max_new_tokens must be a positive integer, got 2\.5"),
]


@pytest.mark.parametrize(("settings", "pattern"), BAD, ids=[f"{next(iter(s))}={next(iter(s.values()))!r}" for s, _ in BAD])
def test_chat_refuses_a_bad_setting_by_name(tiny_model, monkeypatch, settings, pattern):
    def never(*args, **kwargs):
        raise AssertionError("the processor ran before the settings were checked")

    monkeypatch.setattr(tiny_model.chat_processor(), "process_multimodal_inputs", never)
    with pytest.raises(ValueError, match=pattern):
        tiny_model.chat(TEXT, sampling=True, **settings)


def test_settings_at_their_limits_are_taken(tiny_model):
    """The edges that mean something: temperature 0 is greedy, top_k 0 and top_p 1 turn their filter off, a whole
    float passes for an integer."""
    greedy = tiny_model.chat(TEXT, max_new_tokens=6, return_tokens=True)
    assert tiny_model.chat(TEXT, sampling=True, temperature=0, max_new_tokens=6.0, return_tokens=True) == greedy
    assert len(tiny_model.chat(TEXT, sampling=True, top_k=0, top_p=1.0, max_new_tokens=3, return_tokens=True)) <= 3


def test_check_names_the_label_it_is_given():
    with pytest.raises(ValueError, match=r"^Top-k must be an integer >= 0 \(0 turns it off\), got -3$"):
        check_setting("top_k", -3, label="Top-k")
    assert check_setting("top_k", 40.0) == 40 and isinstance(check_setting("top_k", 40.0), int)
    assert check_setting("temperature", 1) == 1.0
