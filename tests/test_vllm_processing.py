"""vLLM-side processing pieces that need no engine: the uint8 packing of slices and the chat-to-request rendering."""

import numpy as np
import pytest
import torch
from PIL import Image

from megrezo.processing_megrezo import MegrezOProcessor
from vllm_demo.chat_requests import reply_tokens, to_vllm_request
from vllm_demo.processing import pack_strips_uint8


@pytest.fixture(scope="module")
def processor(tiny_checkpoint) -> MegrezOProcessor:
    return MegrezOProcessor.from_pretrained(tiny_checkpoint, trust_remote_code=True)


def test_uint8_packing_keeps_every_pixel_of_the_processor_slices(processor):
    """The engine receives uint8; converting back must give the processor's float slices exactly (1000x750 is a
    source slice plus 2x2 tiles of another size, so padding is exercised too)."""
    pixels = np.random.default_rng(0).integers(0, 256, (750, 1000, 3), dtype=np.uint8)
    processed = processor.process_image(Image.fromarray(pixels))
    packed = pack_strips_uint8(processed.strips)
    assert packed.dtype == torch.uint8 and len(packed) == 5
    for row, strip in zip(packed, processed.strips, strict=True):
        width = strip.shape[-1]
        assert torch.equal(row[..., :width].to(strip.dtype), strip)
        assert not row[..., width:].any()


def test_request_prompt_is_the_chat_template_rendering_with_one_placeholder_per_item(processor):
    wave = np.zeros(16000, dtype=np.float32)
    messages = [
        {"role": "user", "content": {"text": "look", "image": Image.new("RGB", (64, 48)), "audio": (wave, 16000)}},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": {"text": "again", "audio": [(wave, 16000), (wave[:8000], 16000)]}},
    ]
    request = to_vllm_request(processor, messages)
    prompt = request["prompt"]
    assert prompt.count("(<image>./</image>)") == 1
    assert [prompt.find(f"Audio {k}: (<audio>./</audio>)") >= 0 for k in (1, 2, 3)] == [True, True, True]
    assert prompt.endswith("<|role_start|>assistant<|role_end|>")
    assert len(request["multi_modal_data"]["image"]) == 1
    assert [len(wave) for wave, rate in request["multi_modal_data"]["audio"]] == [16000, 16000, 8000]


def test_request_rejects_a_malformed_conversation_by_name(processor):
    with pytest.raises(ValueError, match="unknown role"):
        to_vllm_request(processor, [{"role": "robot", "content": "hi"}])


def test_reply_tokens_drop_only_a_trailing_stop_token(processor):
    turn_end = processor.token_ids["<|turn_end|>"]
    assert reply_tokens([5, 6, turn_end], processor) == [5, 6]
    assert reply_tokens([turn_end, 5], processor) == [turn_end, 5]
