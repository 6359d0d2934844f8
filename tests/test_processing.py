"""MegrezOProcessor: messages -> token layout, bounds, labels, collated batch, and its errors.

Expected token sequences are built independently of the processor: the contract's layout (docs/contract.md) written out as one string with
every filler `<|unk|>` spelled out, tokenised by the tokenizer in one call (the slow path the processor avoids).
Slicing and span arithmetic themselves are tested at the function level in test_image_processing.py and
test_audio_processing.py; here the outcome is checked where it lands, in input_ids and bounds.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from media_samples import random_image
from transformers import AutoProcessor, WhisperFeatureExtractor

import megrezo.processing_megrezo
from megrezo.batch_format import validate_audio_encoding, validate_image_encoding
from megrezo.chat_template import DEFAULT_SYSTEM_PROMPT
from megrezo.conversation import template_view
from megrezo.processing_megrezo import MegrezOProcessor

QUERY = 64
RATE = 16000
SYSTEM = f"<|role_start|>system<|role_end|>{DEFAULT_SYSTEM_PROMPT}<|turn_end|>"
PROMPT = "<|role_start|>assistant<|role_end|>"
UNK_RUN = "<|unk|>" * QUERY


@pytest.fixture(scope="module")
def processor(tiny_checkpoint) -> MegrezOProcessor:
    return MegrezOProcessor.from_pretrained(tiny_checkpoint, trust_remote_code=True)


def tone(seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def image_text(index: int, grid: tuple[int, int] | None) -> str:
    """The contract's §4 layout of image `index`, every filler spelled out."""
    text = f"<|image_id_start|>{index}<|image_id_end|><|image_start|>{UNK_RUN}<|image_end|>"
    if grid is not None:
        cols, rows = grid
        text += "\n".join(["".join([f"<|slice_start|>{UNK_RUN}<|slice_end|>"] * cols)] * rows)
    return text


def audio_text(span: int) -> str:
    return "<|audio_start|>" + "<|unk|>" * span + "<|audio_end|>"


def slow_ids(processor: MegrezOProcessor, text: str) -> list[int]:
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def ids_of(processor: MegrezOProcessor, *tokens: str) -> list[int]:
    return [processor.tokenizer.convert_tokens_to_ids(token) for token in tokens]


@pytest.mark.parametrize(
    ("width", "height", "grid", "num_slices"),
    [(1000, 750, (2, 2), 5), (300, 200, None, 1), (1920, 1080, (4, 2), 9), (448, 448, None, 1), (720, 1480, (2, 3), 7)],
)
def test_image_layout_matches_spec_worked_examples(processor, width, height, grid, num_slices):
    sample = processor.process_multimodal_inputs(
        [{"role": "user", "content": {"text": "Describe.", "image": random_image(width, height)}}]
    )
    expected = f"{SYSTEM}<|role_start|>user<|role_end|>{image_text(0, grid)}\nDescribe.<|turn_end|>{PROMPT}"
    assert sample["input_ids"].tolist() == slow_ids(processor, expected)
    (unk,) = ids_of(processor, "<|unk|>")
    assert int((sample["input_ids"] == unk).sum()) == QUERY * num_slices
    encoding = sample["image_encoding"]
    assert encoding["tgt_sizes"].shape == (num_slices, 2)
    assert encoding["image_bounds"].shape == (num_slices, 3)
    assert sample["audio_encoding"] is None


def test_720x1480_gives_448_image_positions(processor):
    sample = processor.process_multimodal_inputs([{"role": "user", "content": {"image": random_image(720, 1480)}}])
    bounds = sample["image_encoding"]["image_bounds"]
    assert int((bounds[:, 2] - bounds[:, 1]).sum()) == 448


@pytest.mark.parametrize(("seconds", "span"), [(1, 27), (5, 127), (30, 752)])
def test_audio_span_in_the_layout(processor, seconds, span):
    sample = processor.process_multimodal_inputs([{"role": "user", "content": {"text": "Hi", "audio": tone(seconds)}}])
    expected = f"{SYSTEM}<|role_start|>user<|role_end|>Audio 1: {audio_text(span)}\nHi<|turn_end|>{PROMPT}"
    assert sample["input_ids"].tolist() == slow_ids(processor, expected)
    b, start, end = sample["audio_encoding"]["audio_bounds"][0].tolist()
    assert (b, end - start - 1) == (0, span)


def test_65_seconds_are_one_audio_item_with_three_clips_back_to_back(processor):
    """The long-audio layout: one `Audio k:` label per item, its 30 s clips' layouts back to back, nothing dropped;
    a following audio item is `Audio 2`."""
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, 65 * RATE).astype(np.float32)
    content = {"text": "Hi", "audio": [wave, tone(1)]}
    sample = processor.process_multimodal_inputs([{"role": "user", "content": content}])
    clips = "".join(audio_text(span) for span in (752, 752, 127))
    audios = f"Audio 1: {clips}\nAudio 2: {audio_text(27)}\n"
    expected = f"{SYSTEM}<|role_start|>user<|role_end|>{audios}Hi<|turn_end|>{PROMPT}"
    assert sample["input_ids"].tolist() == slow_ids(processor, expected)
    whisper = WhisperFeatureExtractor(feature_size=128, sampling_rate=RATE)
    windows = [wave[0 : 30 * RATE], wave[30 * RATE : 60 * RATE], wave[60 * RATE :], tone(1)]
    direct = whisper(windows, sampling_rate=RATE, return_tensors="pt")["input_features"]
    torch.testing.assert_close(sample["audio_encoding"]["input_audios"], direct)


def test_audio_input_forms_agree(processor, tmp_path):
    path = tmp_path / "clip.wav"
    soundfile.write(path, tone(2), RATE)
    at_8k = tone(2, rate=8000)
    forms = [str(path), path.read_bytes(), tone(2), {"array": at_8k, "sampling_rate": 8000}, (at_8k, 8000)]
    spans = []
    for form in forms:
        sample = processor.process_multimodal_inputs([{"role": "user", "content": {"audio": form}}])
        spans.append(sample["audio_encoding"]["audio_span_tokens"].tolist())
    # 2 s: 200 mel frames, T1 = 100, T2 = 50, span 52
    assert spans == [[52]] * len(forms)


def test_several_images_and_audios_in_order_of_appearance(processor):
    conversation = [
        {"role": "user", "content": {"text": "A", "image": [random_image(300, 200), random_image(448, 448)]}},
        {"role": "assistant", "content": "B"},
        {"role": "user", "content": {"text": "C", "image": random_image(1000, 750), "audio": [tone(1), tone(5)]}},
    ]
    sample = processor.process_multimodal_inputs(conversation)
    expected = (
        f"{SYSTEM}<|role_start|>user<|role_end|>{image_text(0, None)}\n{image_text(1, None)}\nA<|turn_end|>"
        f"<|role_start|>assistant<|role_end|>B<|turn_end|>"
        f"<|role_start|>user<|role_end|>{image_text(2, (2, 2))}\nAudio 1: {audio_text(27)}\n"
        f"Audio 2: {audio_text(127)}\nC<|turn_end|>{PROMPT}"
    )
    assert sample["input_ids"].tolist() == slow_ids(processor, expected)


def assert_bounds_point_at_runs(processor, batch):
    """Every image bound covers exactly a filler run between a start and an end token, every audio bound sits on
    its start and end tokens, and together they cover every filler of the batch."""
    unk, image_start, slice_start, image_end, slice_end, audio_start, audio_end = ids_of(
        processor,
        "<|unk|>",
        "<|image_start|>",
        "<|slice_start|>",
        "<|image_end|>",
        "<|slice_end|>",
        "<|audio_start|>",
        "<|audio_end|>",
    )
    input_ids = batch["input_ids"]
    covered = torch.zeros_like(input_ids, dtype=torch.bool)
    for b, start, end in batch["image_encoding"]["image_bounds"].tolist():
        assert end - start == QUERY
        assert input_ids[b, start - 1] in (image_start, slice_start)
        assert input_ids[b, end] in (image_end, slice_end)
        assert bool((input_ids[b, start:end] == unk).all())
        covered[b, start:end] = True
    for b, start, end in batch["audio_encoding"]["audio_bounds"].tolist():
        assert (input_ids[b, start], input_ids[b, end]) == (audio_start, audio_end)
        assert bool((input_ids[b, start + 1 : end] == unk).all())
        covered[b, start + 1 : end] = True
    assert torch.equal(covered, input_ids == unk)
    return covered


def test_round_trip_bounds_and_compose_embeddings(processor, tiny_model):
    with_media = [
        {"role": "user", "content": {"text": "Compare", "image": [random_image(1000, 750), random_image(300, 200)]}},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": {"text": "And this?", "audio": tone(5)}},
    ]
    text_only = [{"role": "user", "content": "A short question"}]
    batch = processor([text_only, with_media])
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"][0, 0] == 0
    assert batch["image_encoding"]["image_bounds"][:, 0].tolist() == [1] * 6
    covered = assert_bounds_point_at_runs(processor, batch)

    with torch.no_grad():
        composed = tiny_model.compose_embeddings(batch)
        text = tiny_model.get_input_embeddings()(batch["input_ids"])
        image_vectors = tiny_model.vision(batch["image_encoding"]).flatten(0, 1)
    changed = (composed != text).any(dim=-1)
    assert torch.equal(changed, covered)
    image_positions = torch.cat([torch.arange(s, e) for _, s, e in batch["image_encoding"]["image_bounds"].tolist()])
    torch.testing.assert_close(composed[1, image_positions], image_vectors)


def test_collator_left_padding_shifts_bounds_and_right_padding_keeps_them(processor):
    long = [{"role": "user", "content": {"text": "x" * 50, "image": random_image(448, 448), "audio": tone(1)}}]
    short = [{"role": "user", "content": {"text": "y", "image": random_image(300, 200), "audio": tone(1)}}]
    samples = [processor.process_multimodal_inputs(c) for c in (long, short)]
    pad = len(samples[0]["input_ids"]) - len(samples[1]["input_ids"])
    left = processor.data_collator(samples, padding_side="left")
    right = processor.data_collator(samples, padding_side="right")
    for key, offset in (("image_encoding", "image_bounds"), ("audio_encoding", "audio_bounds")):
        own = samples[1][key][offset][0].tolist()
        assert left[key][offset][1].tolist() == [1, own[1] + pad, own[2] + pad]
        assert right[key][offset][1].tolist() == [1, own[1], own[2]]
    assert left["attention_mask"][1].tolist() == [0] * pad + [1] * (len(left["attention_mask"][1]) - pad)
    assert right["attention_mask"][1].tolist() == [1] * (len(right["attention_mask"][1]) - pad) + [0] * pad
    (pad_id,) = ids_of(processor, "<|pad|>")
    assert left["input_ids"][1, :pad].tolist() == [pad_id] * pad
    for batch in (left, right):
        shape = tuple(batch["input_ids"].shape)
        validate_image_encoding(batch["image_encoding"], shape, QUERY)
        validate_audio_encoding(batch["audio_encoding"], shape)
        # the strips are re-padded to the batch's longest slice: 32x32 = 1024 patches
        assert batch["image_encoding"]["pixel_values"].shape[-1] == 1024 * 14
        assert batch["image_encoding"]["patch_attention_mask"][1].sum() == 26 * 39


def test_labels_cover_assistant_turns_token_by_token(processor):
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": {"text": "What is it?", "image": random_image(300, 200)}},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Colour?"},
        {"role": "assistant", "content": "Grey."},
    ]
    sample = processor.process_multimodal_inputs(conversation, add_generation_prompt=False, with_labels=True)
    pieces = [
        ("<|role_start|>system<|role_end|>Be brief.<|turn_end|>", False),
        (f"<|role_start|>user<|role_end|>{image_text(0, None)}\nWhat is it?<|turn_end|>", False),
        ("<|role_start|>assistant<|role_end|>", False),
        ("A cat.<|turn_end|>", True),
        ("<|role_start|>user<|role_end|>Colour?<|turn_end|>", False),
        ("<|role_start|>assistant<|role_end|>", False),
        ("Grey.<|turn_end|>", True),
    ]
    expected_ids, expected_labels = [], []
    for text, learned in pieces:
        ids = slow_ids(processor, text)
        expected_ids += ids
        expected_labels += ids if learned else [-100] * len(ids)
    assert sample["input_ids"].tolist() == expected_ids
    assert sample["labels"].tolist() == expected_labels

    batch = processor.data_collator(
        [sample, processor.process_multimodal_inputs(conversation[:3], add_generation_prompt=False, with_labels=True)],
        padding_side="right",
    )
    short = len(batch["labels"][1]) - int(batch["attention_mask"][1].sum())
    assert batch["labels"][1, -short:].tolist() == [-100] * short


def test_processor_call_takes_one_or_many_conversations(processor):
    conversation = [{"role": "user", "content": "Hello"}]
    one = processor(conversation)
    many = processor([conversation, conversation])
    assert one["input_ids"].shape[0] == 1 and many["input_ids"].shape[0] == 2
    assert torch.equal(many["input_ids"][1], one["input_ids"][0])
    assert one["image_encoding"] is None and one["audio_encoding"] is None


def test_auto_processor_loads_the_saved_remote_code_and_round_trips(tiny_checkpoint, processor, tmp_path):
    loaded = AutoProcessor.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    assert type(loaded).__name__ == "MegrezOProcessor"
    assert not type(loaded).__module__.startswith("megrezo")  # the copy saved with the checkpoint, not this repo
    assert isinstance(loaded.audio_feature_extractor, WhisperFeatureExtractor)
    assert loaded.audio_feature_extractor.feature_size == 128
    loaded.save_pretrained(tmp_path / "again")
    again = AutoProcessor.from_pretrained(tmp_path / "again", trust_remote_code=True)
    conversation = [{"role": "user", "content": {"text": "Hi", "image": random_image(1000, 750), "audio": tone(1)}}]
    reference = processor.process_multimodal_inputs(conversation)
    for other in (loaded, again):
        sample = other.process_multimodal_inputs(conversation)
        assert torch.equal(sample["input_ids"], reference["input_ids"])
        assert torch.equal(sample["image_encoding"]["image_bounds"], reference["image_encoding"]["image_bounds"])
        assert torch.equal(sample["audio_encoding"]["input_audios"], reference["audio_encoding"]["input_audios"])


FRESH_PROCESS = """
import sys
sys.modules["megrezo"] = None  # the repository's package must not be importable here
from transformers import AutoProcessor
processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
sample = processor.process_multimodal_inputs(
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    add_generation_prompt=False, with_labels=True,
)
print(sample["input_ids"].tolist(), sample["labels"].tolist())
"""


def test_checkpoint_carries_every_processor_module_and_loads_without_the_repository(tiny_checkpoint, processor,
                                                                                    tmp_path):
    """Each processing step lives in a file of its own; the checkpoint folder carries all of them, so a process that
    cannot import this repository still loads the processor and gets the same sample."""
    package = Path(megrezo.processing_megrezo.__file__).parent
    relative_imports = re.findall(r"^from \.(\w+) import", (package / "processing_megrezo.py").read_text(), re.M)
    assert {"conversation", "conversation_media", "prompt_layout", "training_labels", "batch_collation"} <= set(
        relative_imports
    )
    for name in relative_imports:
        assert (tiny_checkpoint / f"{name}.py").read_text() == (package / f"{name}.py").read_text(), name
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    expected = processor.process_multimodal_inputs(conversation, add_generation_prompt=False, with_labels=True)
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(tiny_checkpoint)], capture_output=True, text=True, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"{expected['input_ids'].tolist()} {expected['labels'].tolist()}"


def test_release_layout_without_processor_config_loads(tiny_checkpoint, tmp_path):
    """The release ships preprocessor_config.json but no processor_config.json: the Whisper settings default."""
    folder = tmp_path / "release_like"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "processor_config.json").unlink()
    loaded = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert loaded.audio_feature_extractor.feature_size == 128
    assert loaded.audio_feature_extractor.sampling_rate == RATE
    assert loaded.max_positions == 4096


def test_tokenizer_without_chat_template_uses_the_project_template(processor):
    tokenizer = processor.tokenizer
    saved = tokenizer.chat_template
    tokenizer.chat_template = None
    try:
        bare = MegrezOProcessor(processor.image_processor, tokenizer)
    finally:
        tokenizer.chat_template = saved
    conversation = [{"role": "user", "content": "Hello"}]
    assert torch.equal(bare(conversation)["input_ids"], processor(conversation)["input_ids"])


def test_max_length_cutting_media_or_text_raises(processor):
    conversation = [
        {"role": "user", "content": {"text": "What?", "image": random_image(300, 200)}},
        {"role": "assistant", "content": "An answer."},
    ]
    sample = processor.process_multimodal_inputs(conversation, add_generation_prompt=False, with_labels=True)
    length = len(sample["input_ids"])
    _, _, image_end = sample["image_encoding"]["image_bounds"][0].tolist()
    with pytest.raises(ValueError, match=rf"{length} tokens.*max_length {image_end}.*cut 1 media placeholder"):
        processor.process_multimodal_inputs(conversation, False, with_labels=True, max_length=image_end)
    with pytest.raises(ValueError, match=rf"{length} tokens.*max_length {length - 1}.*text only"):
        processor.process_multimodal_inputs(conversation, False, with_labels=True, max_length=length - 1)
    fits = processor.process_multimodal_inputs(conversation, False, with_labels=True, max_length=length)
    assert torch.equal(fits["labels"], sample["labels"])


def test_prompt_longer_than_the_model_positions_reports_the_count(processor):
    text = "a" * 5000
    length = len(slow_ids(processor, f"{SYSTEM}<|role_start|>user<|role_end|>{text}<|turn_end|>{PROMPT}"))
    with pytest.raises(ValueError, match=rf"prompt is {length} tokens, longer than the model's 4096 positions"):
        processor.process_multimodal_inputs([{"role": "user", "content": text}])


def bad_image_file(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"this is not a jpeg")
    return str(path)


def bad_audio_file(tmp_path):
    path = tmp_path / "broken.wav"
    path.write_bytes(b"RIFF....WAVEfmt this is not audio")
    return str(path)


@pytest.mark.parametrize(
    ("make_messages", "error", "pattern"),
    [
        (
            lambda d: [{"role": "user", "content": {"image": str(d / "nope.jpg")}}],
            FileNotFoundError,
            "image file not found.*nope.jpg",
        ),
        (
            lambda d: [{"role": "user", "content": {"audio": str(d / "nope.wav")}}],
            FileNotFoundError,
            "audio file not found.*nope.wav",
        ),
        (
            lambda d: [{"role": "user", "content": {"image": bad_image_file(d)}}],
            ValueError,
            r"messages\[0\] image 0: corrupt or unsupported image",
        ),
        (
            lambda d: [{"role": "user", "content": {"audio": bad_audio_file(d)}}],
            ValueError,
            r"messages\[0\] audio 0: could not decode audio",
        ),
        (lambda d: [{"role": "user", "content": {"image": 42}}], ValueError, "unsupported image input type int"),
        (lambda d: [{"role": "user", "content": {"audio": object()}}], ValueError, "unsupported audio type object"),
        (lambda d: [{"role": "user", "content": 42}], ValueError, r"content must be a string or a dict"),
        (lambda d: [{"role": "user", "content": {"video": "x.mp4"}}], ValueError, r"unknown content keys \['video'\]"),
        (lambda d: [], ValueError, "empty message list"),
        (lambda d: [{"role": "user", "content": ""}], ValueError, r"messages\[0\] \(user\): empty content"),
        (lambda d: [{"role": "user", "content": {"text": "  "}}], ValueError, "empty content"),
        (lambda d: [{"role": "user", "content": {}}], ValueError, "empty content"),
        (lambda d: [{"role": "robot", "content": "hi"}], ValueError, "unknown role 'robot'"),
        (lambda d: [{"role": "user"}], ValueError, "must be a dict with 'role' and 'content'"),
        (
            lambda d: [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "assistant", "content": "c"},
            ],
            ValueError,
            r"two assistant turns in a row \(messages 1 and 2\)",
        ),
        (
            lambda d: [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            ValueError,
            "ends with an assistant turn but a reply is requested",
        ),
        (lambda d: [{"role": "assistant", "content": "b"}], ValueError, "cannot start with an assistant turn"),
        (
            lambda d: [{"role": "user", "content": "look: (<image>./</image>)"}],
            ValueError,
            "rendered 1 image and 0 audio placeholders for 0 images",
        ),
    ],
)
def test_bad_input_is_named(processor, tmp_path, make_messages, error, pattern):
    with pytest.raises(error, match=pattern):
        processor(make_messages(tmp_path))


def test_tokenizer_without_audio_markers_still_serves_text_and_images(processor):
    bare = MegrezOProcessor(
        tokenizer=processor.tokenizer, audio_start_token="<|speech|>", audio_end_token="<|/speech|>"
    )
    sample = bare.process_multimodal_inputs(
        [{"role": "user", "content": {"text": "Hi", "image": random_image(300, 200)}}]
    )
    assert sample["image_encoding"]["image_bounds"].shape == (1, 3)
    with pytest.raises(ValueError, match=r"no token \['<\|speech\|>', '<\|/speech\|>'\] to mark audio"):
        bare.process_multimodal_inputs([{"role": "user", "content": {"audio": tone(1)}}])


def test_errors_in_a_batch_name_the_conversation(processor):
    good = [{"role": "user", "content": "Hi"}]
    with pytest.raises(ValueError, match=r"conversation 1: messages\[0\]: unknown role 'bot'"):
        processor([good, [{"role": "bot", "content": "Hi"}]])


def single_media_values(tmp_path) -> dict[str, object]:
    """Every form one media item can take in a message, by name."""
    image_path = tmp_path / "image.png"
    random_image(64, 48).save(image_path)
    return {
        "path": str(image_path),
        "PIL image": random_image(64, 48),
        "array": tone(1),
        "(array, rate)": (tone(1), RATE),
        "bytes": image_path.read_bytes(),
        "dict": {"array": tone(1), "sampling_rate": RATE},
        "tensor": torch.from_numpy(tone(1)),
    }


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_chat_template_reads_any_single_media_value_as_one_item_and_only_a_list_as_several(processor, kind, tmp_path):
    """The authors render prompts with `tokenizer.apply_chat_template(conversation)` on the media themselves (a PIL
    image in their vLLM example): one value is one placeholder whatever its type, a list is one per element, and the
    text is the processor's own rendering of the same conversation."""
    placeholder = "(<image>./</image>)" if kind == "image" else "(<audio>./</audio>)"
    values = single_media_values(tmp_path)
    values |= {"list of two": [values["PIL image"], values["path"]], "list of three": [values["array"]] * 3}
    for name, value in values.items():
        conversation = [{"role": "user", "content": {"text": "Hi", kind: value}}]
        rendered = processor.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        expected = len(value) if isinstance(value, list) else 1
        assert rendered.count(placeholder) == expected, name
        assert rendered == processor.render(template_view(conversation), add_generation_prompt=True), name
