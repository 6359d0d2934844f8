"""What a checkpoint folder's own code does in the transformers that runs this script, as one JSON file.

    python scripts/compat_check.py check CHECKPOINT RELEASE_LAYOUT OUT.json
    python scripts/compat_check.py release-layout CHECKPOINT OUT_DIR RELEASE_FIXTURES
    python scripts/compat_check.py compare REFERENCE.json RESULT.json...

`check` loads CHECKPOINT (a folder this project wrote) the way a user does, `AutoModelForCausalLM.from_pretrained(
..., trust_remote_code=True)`, and records the generated token ids of a text, an image, an audio and a two-conversation
batch chat, the streamed text, and the processor's token ids for a conversation with an image and an audio item on
RELEASE_LAYOUT, a copy of the folder laid out like the released checkpoint (its config.json with `rope_theta`, its
preprocessor_config.json, no processor_config.json). Run it without this project importable (another working
directory, no PYTHONPATH): only the folder's code may serve. It needs nothing beyond what that code imports
(torch, transformers, numpy, pillow, soundfile) and the standard library.

`release-layout` makes RELEASE_LAYOUT from a checkpoint folder and the repository's tests/fixtures/release.
`compare` prints a Markdown table row per result and exits non-zero unless every row matches REFERENCE.
"""

import json
import math
import shutil
import struct
import sys
import threading
import traceback
import wave
import zlib
from pathlib import Path

CHECKS = ("load", "text", "image", "audio", "stream", "batch", "auto_processor", "release_processor", "release_chat")
TOKEN_CHECKS = CHECKS[1:]
MAX_NEW_TOKENS = 12


def write_png(path: Path, width: int = 300, height: int = 200) -> None:
    """A colour gradient as an RGB PNG, written with zlib alone so the picture is the same in every environment."""
    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in ((x * 255) // width, (y * 255) // height, 128))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def write_wav(path: Path, seconds: float = 2.0, rate: int = 16000) -> None:
    """A 16 kHz 16-bit mono sweep from 200 to 2,000 Hz."""
    count = int(seconds * rate)
    samples = []
    for n in range(count):
        t = n / rate
        frequency = 200 + 1800 * t / seconds
        samples.append(int(12000 * math.sin(2 * math.pi * frequency * t)))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(struct.pack(f"<{count}h", *samples))


def release_layout(checkpoint: Path, out_dir: Path, fixtures: Path) -> None:
    """The checkpoint's weights, tokenizer and code with the release's config.json fields and preprocessor_config.json
    and without processor_config.json (the release has none)."""
    shutil.copytree(checkpoint, out_dir, dirs_exist_ok=True)
    (out_dir / "processor_config.json").unlink(missing_ok=True)
    shutil.copy(fixtures / "preprocessor_config.json", out_dir / "preprocessor_config.json")
    release = json.loads((fixtures / "config.json").read_text())
    ours = json.loads((checkpoint / "config.json").read_text())
    config = {key: ours.get(key, value) for key, value in release.items()}
    config["auto_map"] = release["auto_map"]
    config["transformers_version"] = release["transformers_version"]
    config["_name_or_path"] = release["_name_or_path"]
    config["vision_config"] = release["vision_config"] | ours["vision_config"]
    config["audio_config"] = ours["audio_config"]
    config["torch_dtype"] = ours.get("torch_dtype", "float32")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def run_checks(checkpoint: Path, release_dir: Path, work: Path) -> dict:
    import transformers

    results: dict = {"transformers": transformers.__version__, "checks": {}}
    work.mkdir(parents=True, exist_ok=True)
    image, audio = work / "gradient.png", work / "sweep.wav"
    write_png(image)
    write_wav(audio)
    state: dict = {}

    def record(name, step):
        try:
            results["checks"][name] = {"ok": True, "value": step()}
        except Exception as error:  # every failure is a cell of the table, not the end of the run
            results["checks"][name] = {"ok": False, "error": f"{type(error).__name__}: {error}"[:600],
                                       "trace": traceback.format_exc()[-3000:]}

    def load():
        from transformers import AutoModelForCausalLM

        state["model"] = AutoModelForCausalLM.from_pretrained(str(checkpoint), trust_remote_code=True).eval()
        return type(state["model"]).__name__

    def chat(conversation, model=None):
        model = model or state["model"]
        return model.chat(conversation, max_new_tokens=MAX_NEW_TOKENS, return_tokens=True)

    text = [{"role": "user", "content": "Hello! Please introduce yourself."}]
    with_image = [{"role": "user", "content": {"text": "What is in the picture?", "image": str(image)}}]
    with_audio = [{"role": "user", "content": {"text": "What do you hear?", "audio": str(audio)}}]

    def stream():
        from transformers import TextIteratorStreamer

        model = state["model"]
        streamer = TextIteratorStreamer(model.chat_processor().tokenizer, skip_prompt=True, skip_special_tokens=True)
        reply: dict = {}
        worker = threading.Thread(target=lambda: reply.update(text=model.chat(text, max_new_tokens=MAX_NEW_TOKENS,
                                                                              streamer=streamer)))
        worker.start()
        pieces = "".join(streamer)
        worker.join(timeout=120)
        if pieces.strip() != reply.get("text", "").strip():
            raise AssertionError(f"streamed {pieces!r} but chat returned {reply.get('text')!r}")
        return pieces

    conversation = [{"role": "user", "content": {"text": "Describe both.", "image": str(image), "audio": str(audio)}}]

    def processor_ids(processor) -> dict:
        return {"input_ids": processor(conversation)["input_ids"][0].tolist(),
                "mel_bins": processor.audio_feature_extractor.feature_size}

    def release_processor():
        """What AutoProcessor does once it knows the class: the class named in config.json's auto_map, from the
        folder's code. (AutoProcessor itself cannot find it there: the release's preprocessor_config.json names
        processor_class without auto_map, and transformers stops at that name.)"""
        from transformers import AutoConfig
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        auto_map = AutoConfig.from_pretrained(str(release_dir), trust_remote_code=True).auto_map
        processor_class = get_class_from_dynamic_module(auto_map["AutoProcessor"], str(release_dir))
        return processor_ids(processor_class.from_pretrained(str(release_dir), trust_remote_code=True))

    def auto_processor():
        """AutoProcessor on a folder this project wrote, without processor_config.json as in the release."""
        from transformers import AutoProcessor

        return processor_ids(AutoProcessor.from_pretrained(str(no_processor_config), trust_remote_code=True))

    def release_chat():
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(release_dir), trust_remote_code=True).eval()
        return chat(conversation, model)

    record("load", load)
    if results["checks"]["load"]["ok"]:
        record("text", lambda: chat(text))
        record("image", lambda: chat(with_image))
        record("audio", lambda: chat(with_audio))
        record("stream", stream)
        record("batch", lambda: chat([text, with_image]))
    no_processor_config = work / "no-processor-config"
    shutil.copytree(checkpoint, no_processor_config, dirs_exist_ok=True)
    (no_processor_config / "processor_config.json").unlink(missing_ok=True)
    record("auto_processor", auto_processor)
    record("release_processor", release_processor)
    record("release_chat", release_chat)
    return results


def compare(reference: dict, result: dict) -> tuple[list[str], bool]:
    """The row of `result`'s table: each check ok or not; the token cells also compare with `reference`."""
    cells, all_green = [], True
    for name in CHECKS:
        got = result["checks"].get(name, {"ok": False, "error": "not run"})
        if not got["ok"]:
            cells.append("FAIL")
            all_green = False
        elif name in TOKEN_CHECKS and got["value"] != reference["checks"][name].get("value"):
            cells.append("differs")
            all_green = False
        else:
            cells.append("ok")
    return cells, all_green


def main() -> int:
    command, *args = sys.argv[1:] or ["--help"]
    if command == "check":
        checkpoint, release_dir, out = (Path(a).resolve() for a in args)
        results = run_checks(checkpoint, release_dir, out.parent / f"{out.stem}-inputs")
        out.write_text(json.dumps(results, indent=1) + "\n")
        for name, got in results["checks"].items():
            print(f"{results['transformers']:>8} {name:<18} {'ok' if got['ok'] else got['error']}")
        return 0
    if command == "release-layout":
        release_layout(*(Path(a) for a in args))
        return 0
    if command == "compare":
        reference = json.loads(Path(args[0]).read_text())
        print("| transformers | " + " | ".join(CHECKS) + " | token-identical |")
        print("|" + " --- |" * (len(CHECKS) + 2))
        green = True
        for path in args[1:]:
            result = json.loads(Path(path).read_text())
            cells, row_green = compare(reference, result)
            identical = "yes" if row_green else "no"
            print(f"| {result['transformers']} | " + " | ".join(cells) + f" | {identical} |")
            green &= row_green
        return 0 if green else 1
    print(__doc__)
    return 0 if command in ("-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main())
