"""`model.chat(..., compile=True)`: a static KV cache and the decode step compiled by torch.compile (inductor on
the CPU) give the eager path's greedy tokens, and compile once per kind of batch, not per request.

Compiling is slow on a small machine (about a minute per graph), so one compiled model serves the whole module and
the requests are chosen to need two graphs: batch 1 and batch > 1 (torch specialises a dimension of size 1)."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch._dynamo.utils import counters
from transformers import AutoModelForCausalLM

from megrezo.compiled_decode import static_cache_length

NEW_TOKENS = 12
RATE = 16000


def image(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def speech(seconds: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.3, 0.3, int(seconds * RATE)).astype(np.float32)


TEXT = [{"role": "user", "content": "Tell me about the river and the hills."}]
IMAGE = [{"role": "user", "content": {"text": "What is in the picture?", "image": image(640, 480, 1)}}]
AUDIO = [{"role": "system", "content": "Answer briefly."},
         {"role": "user", "content": {"text": "What was said?", "audio": speech(1.5, 2)}}]
BATCH = [TEXT, IMAGE, AUDIO]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    """A model of its own, so the compiled graphs and kept caches stay out of the session's shared model."""
    return AutoModelForCausalLM.from_pretrained(tiny_checkpoint, trust_remote_code=True, dtype=torch.float32).eval()


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_chat_decodes_eagerly_by_default(tiny_checkpoint):
    """Without compile=True nothing is compiled and no static cache is kept (a fresh model: the module's shared one
    compiles in the other tests)."""
    fresh = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, trust_remote_code=True, dtype=torch.float32).eval()
    graphs = compiled_graphs()
    fresh.chat(TEXT, max_new_tokens=4)
    assert compiled_graphs() == graphs
    assert getattr(fresh.llm, "_compiled_call", None) is None and getattr(fresh, "_static_caches", None) is None


@pytest.mark.parametrize("conversation", [TEXT, IMAGE, AUDIO, BATCH], ids=["text", "image", "audio", "batch of 3"])
def test_compiled_replies_equal_eager(model, conversation):
    eager = model.chat(conversation, max_new_tokens=NEW_TOKENS, return_tokens=True)
    compiled = model.chat(conversation, max_new_tokens=NEW_TOKENS, return_tokens=True, compile=True)
    assert compiled == eager
    replies = eager if conversation is BATCH else [eager]
    assert all(len(tokens) > 0 for tokens in replies)
    assert getattr(model.llm, "_compiled_call", None) is not None, "generate did not take the compiled path"


def test_new_requests_do_not_recompile(model):
    """After one batch of each kind, requests of other lengths, batch sizes and cache lengths reuse the graphs: the
    count of compiled graphs does not move."""
    for conversations in (TEXT, BATCH[:2]):
        model.chat(conversations, max_new_tokens=4, compile=True)
    graphs = compiled_graphs()
    assert graphs >= 1
    requests = [  # (conversations, new tokens, the static cache's positions)
        ([[{"role": "user", "content": "Hi"}]], 8, 256),
        ([[{"role": "user", "content": {"image": image(900, 300, 5), "audio": speech(3, 6)}}]], 80, 1024),
        ([TEXT, AUDIO], 20, 256),
        ([IMAGE, TEXT, AUDIO, [{"role": "user", "content": "One more question, a longer one this time."}]], 20, 512),
    ]
    for conversations, new_tokens, cache_length in requests:
        prompt = model.chat_processor()(conversations, add_generation_prompt=True)["input_ids"].shape[1]
        assert static_cache_length(prompt + new_tokens, model.config.max_position_embeddings) == cache_length
        eager = model.chat(conversations, max_new_tokens=new_tokens, min_new_tokens=4, return_tokens=True)
        compiled = model.chat(conversations, max_new_tokens=new_tokens, min_new_tokens=4, return_tokens=True,
                              compile=True)
        assert compiled == eager
    assert compiled_graphs() == graphs


@pytest.mark.parametrize(("needed", "length"), [(1, 256), (140, 256), (257, 512), (1000, 1024), (3000, 4096),
                                                (4096, 4096), (4100, 4100)])
def test_static_cache_length_rounds_up_to_a_power_of_two_within_the_positions(needed, length):
    assert static_cache_length(needed, positions=4096) == length
