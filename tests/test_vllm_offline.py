"""vLLM offline generation against the HF model: same prompt tokens, same greedy tokens, batched equal to alone.

One engine serves the whole module (vLLM's CPU start-up takes tens of seconds). Both sides run the tiny random
checkpoint in float32 with their default settings and nothing passed to make them agree: `model.chat(messages)`
(greedy, repetition penalty 1.2) against the authors' vLLM settings (temperature 0, repetition penalty 1.2, stop on
`<|turn_end|>` and `<|eos|>`), through `LLM.generate` and through `LLM.chat` with OpenAI-style content parts (the
server's message format). So any difference in layout, encoders, embedding placement or the meaning of the
repetition penalty shows up as different prompt ids or a different greedy continuation. The authors' own example
code runs unchanged against the same engine.
"""

import base64
import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from megrezo.conversation import media_items
from megrezo.processing_megrezo import MegrezOProcessor
from vllm_demo.chat_requests import authors_sampling_params, reply_tokens, to_vllm_request
from vllm_demo.offline import load_llm

DATA = Path(__file__).resolve().parents[1] / "data"
NEW_TOKENS = 40


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic RGB image; 1000x750 slices into a 2x2 grid plus the source (5 slices)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def tone(seconds: float, frequency: float) -> tuple[np.ndarray, int]:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), 16000


CONVERSATIONS = {
    "text": [{"role": "user", "content": "Write a short story about a lighthouse keeper."}],
    "image": [{"role": "user", "content": {"text": "Describe this image.", "image": noise_image(1000, 750, 0)}}],
    "audio": [{"role": "user", "content": {"text": "What is said here?", "audio": str(DATA / "sample_audio.wav")}}],
    "image+audio": [
        {
            "role": "user",
            "content": {
                "text": "Compare the picture and the sound.",
                "image": str(DATA / "sample_image.jpg"),
                "audio": str(DATA / "sample_audio.wav"),
            },
        }
    ],
    "three-turn": [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": {"text": "What is in this picture?", "image": str(DATA / "sample_image.jpg")}},
        {"role": "assistant", "content": "A small scene with shapes."},
        {"role": "user", "content": {"text": "And this sound?", "audio": tone(2.0, 440.0)}},
        {"role": "assistant", "content": "A steady tone."},
        {"role": "user", "content": {"text": "Now this one, compared to the first.", "image": noise_image(300, 200, 1)}},
    ],
    "65 s audio": [
        {
            "role": "user",
            "content": {
                "text": "Summarise the recording.",
                "audio": (np.random.default_rng(9).uniform(-0.3, 0.3, 65 * 16000).astype(np.float32), 16000),
            },
        }
    ],
}
EXTRA_BATCH_CONVERSATIONS = [
    [{"role": "user", "content": "List three colours."}],
    [{"role": "user", "content": {"text": "Two images.", "image": [noise_image(448, 448, 2), noise_image(640, 300, 3)]}}],
    [{"role": "user", "content": {"text": "Two clips.", "audio": [tone(1.0, 300.0), tone(3.5, 700.0)]}}],
]


@pytest.fixture(scope="module")
def processor(tiny_checkpoint) -> MegrezOProcessor:
    return MegrezOProcessor.from_pretrained(tiny_checkpoint, trust_remote_code=True)


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    # LLM.chat decodes audio parts with the project's media connector, as the server does with this variable set.
    previous = os.environ.get("VLLM_MEDIA_CONNECTOR")
    os.environ["VLLM_MEDIA_CONNECTOR"] = "megrezo"
    engine = load_llm(tiny_checkpoint, dtype="float32", seed=0)
    yield engine
    engine.llm_engine.engine_core.shutdown()
    if previous is None:
        os.environ.pop("VLLM_MEDIA_CONNECTOR")
    else:
        os.environ["VLLM_MEDIA_CONNECTOR"] = previous


@pytest.fixture(scope="module")
def greedy(processor):
    """The authors' vLLM settings as `authors_sampling_params` gives them; logprobs only adds to the output."""
    return authors_sampling_params(processor, max_tokens=NEW_TOKENS, logprobs=0)


@pytest.fixture(scope="module")
def alone(llm, processor, greedy) -> dict:
    """Each conversation generated on its own: name or batch index -> vLLM RequestOutput."""
    results = {}
    named = list(CONVERSATIONS.items()) + list(enumerate(EXTRA_BATCH_CONVERSATIONS))
    for key, messages in named:
        results[key] = llm.generate([to_vllm_request(processor, messages)], greedy, use_tqdm=False)[0]
    return results


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_prompt_tokens_match_the_hf_processor(name, alone, processor):
    expected = processor.process_multimodal_inputs(CONVERSATIONS[name], add_generation_prompt=True)["input_ids"]
    assert alone[name].prompt_token_ids == expected.tolist()


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_greedy_tokens_match_model_chat(name, alone, processor, tiny_model):
    hf_tokens = tiny_model.chat(CONVERSATIONS[name], max_new_tokens=NEW_TOKENS, return_tokens=True)
    vllm_tokens = reply_tokens(alone[name].outputs[0].token_ids, processor)
    # A stop token may end a random model's reply early; where it comes is compared too (vLLM keeps it at the end).
    assert len(hf_tokens) >= 8, "the reference stopped at once; the comparison needs a few tokens"
    assert vllm_tokens == hf_tokens


def hf_token_logprobs(model, processor: MegrezOProcessor, messages: list[dict], tokens: list[int]) -> torch.Tensor:
    """Log-probabilities the HF model gives `tokens` as the continuation of the conversation (one forward pass)."""
    batch = processor([messages], padding_side="left")
    prompt_length = batch["input_ids"].shape[1]
    batch["input_ids"] = torch.cat([batch["input_ids"], torch.tensor([tokens])], dim=1)
    with torch.no_grad():
        logits = model.llm(inputs_embeds=model.compose_embeddings(batch)).logits[0].float()
    positions = torch.arange(prompt_length - 1, prompt_length - 1 + len(tokens))
    return logits.log_softmax(-1)[positions, torch.tensor(tokens)]


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_token_logprobs_match_the_hf_model(name, alone, processor, tiny_model):
    """Tokens can agree while the media vectors are slightly off; the log-probabilities of the generated tokens
    cannot: they must agree with the HF model's to float32 rounding."""
    completion = alone[name].outputs[0]
    steps = zip(completion.logprobs, completion.token_ids, strict=True)
    vllm_logprobs = torch.tensor([step[token].logprob for step, token in steps])
    expected = hf_token_logprobs(tiny_model, processor, CONVERSATIONS[name], list(completion.token_ids))
    torch.testing.assert_close(vllm_logprobs, expected, atol=1e-5, rtol=0)


def test_batch_of_mixed_requests_equals_each_alone(llm, processor, greedy, alone):
    conversations = list(CONVERSATIONS.values()) + EXTRA_BATCH_CONVERSATIONS
    keys = list(CONVERSATIONS) + list(range(len(EXTRA_BATCH_CONVERSATIONS)))
    batch = llm.generate([to_vllm_request(processor, c) for c in conversations], greedy, use_tqdm=False)
    for key, output in zip(keys, batch, strict=True):
        assert output.prompt_token_ids == alone[key].prompt_token_ids, key
        assert list(output.outputs[0].token_ids) == list(alone[key].outputs[0].token_ids), key


def test_media_without_placeholder_is_rejected_by_name(llm, processor, greedy):
    request = {"prompt": "no placeholder here", "multi_modal_data": {"image": noise_image(64, 64, 4)}}
    with pytest.raises(Exception, match="placeholder|image"):
        llm.generate([request], greedy, use_tqdm=False)



def test_replies_depend_on_the_media(llm, processor, greedy):
    """The parity tests mean something only if the media vectors steer the reply: another image or another clip
    with the same text gives another continuation."""
    outputs = llm.generate(
        [
            to_vllm_request(processor, [{"role": "user", "content": {"text": "Describe.", "image": image}}])
            for image in (noise_image(448, 448, 5), noise_image(448, 448, 6))
        ]
        + [
            to_vllm_request(processor, [{"role": "user", "content": {"text": "Describe.", "audio": clip}}])
            for clip in (str(DATA / "sample_audio.wav"), tone(2.0, 900.0))
        ],
        greedy,
        use_tqdm=False,
    )
    tokens = [list(output.outputs[0].token_ids) for output in outputs]
    assert outputs[0].prompt_token_ids == outputs[1].prompt_token_ids
    assert tokens[0] != tokens[1]
    assert tokens[2] != tokens[3]


def test_cached_image_reused_at_another_index_gets_its_new_image_id(llm, processor, greedy, tiny_model):
    """vLLM caches processed items by content; an image first seen as image 0 and then sent as image 1 must be laid
    out with `<|image_id_start|>1<|image_id_end|>`, as the HF processor does."""
    first, second = noise_image(500, 400, 7), noise_image(400, 500, 8)
    llm.generate([to_vllm_request(processor, [{"role": "user", "content": {"text": "a", "image": first}}])], greedy)
    messages = [{"role": "user", "content": {"text": "both", "image": [second, first]}}]
    output = llm.generate([to_vllm_request(processor, messages)], greedy, use_tqdm=False)[0]
    expected = processor.process_multimodal_inputs(messages)["input_ids"].tolist()
    assert output.prompt_token_ids == expected
    hf_tokens = tiny_model.chat(messages, max_new_tokens=NEW_TOKENS, return_tokens=True)
    assert reply_tokens(output.outputs[0].token_ids, processor) == hf_tokens


def data_url(item: object, kind: str) -> str:
    """A media item of `model.chat`'s format as a data URL with lossless content: file bytes for a path, PNG for a
    PIL image, float WAV for an `(array, rate)` pair, so both backends decode the same pixels and samples."""
    if isinstance(item, str):
        data, mime = Path(item).read_bytes(), "image/jpeg" if kind == "image" else "audio/wav"
    elif kind == "image":
        buffer = io.BytesIO()
        item.save(buffer, format="PNG")
        data, mime = buffer.getvalue(), "image/png"
    else:
        buffer = io.BytesIO()
        soundfile.write(buffer, item[0], item[1], format="WAV", subtype="FLOAT")
        data, mime = buffer.getvalue(), "audio/wav"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def openai_messages(messages: list[dict]) -> list[dict]:
    """`model.chat` messages as OpenAI chat messages with content parts, the format of the server and `LLM.chat`."""
    converted = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            parts = [{"type": "image_url", "image_url": {"url": data_url(item, "image")}}
                     for item in media_items(content.get("image"))]
            parts += [{"type": "audio_url", "audio_url": {"url": data_url(item, "audio")}}
                      for item in media_items(content.get("audio"))]
            content = parts + [{"type": "text", "text": content["text"]}]
        converted.append({"role": message["role"], "content": content})
    return converted


def test_llm_chat_with_content_parts_gives_model_chat_tokens(llm, processor, greedy, alone):
    """`LLM.chat` renders OpenAI-style messages through vLLM's own chat handling (as the server does): the same
    prompt tokens and the same greedy reply as `model.chat` (checked against it through `alone` above)."""
    outputs = llm.chat([openai_messages(c) for c in CONVERSATIONS.values()], greedy, use_tqdm=False)
    for name, output in zip(CONVERSATIONS, outputs, strict=True):
        assert output.prompt_token_ids == alone[name].prompt_token_ids, name
        assert list(output.outputs[0].token_ids) == list(alone[name].outputs[0].token_ids), name


def test_authors_example_code_runs_unchanged(llm, tiny_checkpoint, processor, tmp_path):
    """The authors' README and vLLM example, with only the model path changed (and no `.cuda()`): HF
    `from_pretrained(..., torch_dtype=torch.bfloat16)` and `model.chat(messages, sampling=False, max_new_tokens=100)`
    with an image and with image + mp3 audio; vLLM `apply_chat_template` on a conversation holding the PIL image (or
    the audio) itself, then `llm.generate` with their SamplingParams. Their vLLM prompt and reply must be the ones
    this project's request builder gives."""
    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams

    image_path = str(DATA / "sample_image.jpg")
    mp3_path = tmp_path / "sample_audio.mp3"
    soundfile.write(mp3_path, *soundfile.read(DATA / "sample_audio.wav", dtype="float32"), format="MP3")
    model = AutoModelForCausalLM.from_pretrained(
        str(tiny_checkpoint), trust_remote_code=True, torch_dtype=torch.bfloat16
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for content in ({"text": "Describe the image.", "image": image_path},
                        {"image": image_path, "audio": str(mp3_path)}):
            messages = [{"role": "user", "content": content}]
            response = model.chat(messages, sampling=False, max_new_tokens=100)
            assert isinstance(response, str) and response

    img = Image.open(image_path)
    audio = soundfile.read(DATA / "sample_audio.wav", dtype="float32")
    sampling_params = SamplingParams(temperature=0, repetition_penalty=1.2, stop=["<|turn_end|>", "<|eos|>"])
    for key, media in (("image", img), ("audio", audio)):
        conversation = [{"role": "user", "content": {"text": "What is this?", key: media}}]
        prompt = llm.get_tokenizer().apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        vllm_inputs = [{"prompt": prompt, "multi_modal_data": {key: media}}]
        output = llm.generate(vllm_inputs, sampling_params, use_tqdm=False)[0]
        ours = llm.generate([to_vllm_request(processor, conversation)], authors_sampling_params(processor), use_tqdm=False)
        assert output.prompt_token_ids == ours[0].prompt_token_ids, key
        theirs = reply_tokens(output.outputs[0].token_ids, processor)
        assert theirs and theirs == reply_tokens(ours[0].outputs[0].token_ids, processor)[: len(theirs)], key
