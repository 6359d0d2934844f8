"""(Re)create the example finetuning set in `data/train/`: `records.jsonl`, `images/` and `audios/`.

The set exists to show the JSONL format and to give `finetune/finetune.sh` and the tests something real to read:
small PIL drawings of one shape in one colour, short espeak-ng utterances naming a colour or a shape, and
conversations mixing image-only, audio-only and image+audio turns (one of them multi-turn). Everything is
generated, so the repository carries no third-party media: `python data/train/make_train_data.py`.
"""

import argparse
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image, ImageDraw

TRAIN_DIR = Path(__file__).resolve().parent
IMAGE_SIZE = 96
SAMPLING_RATE = 16000
VOICE = "en-us"
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (240, 210, 20)}
SHAPES = ("square", "circle", "triangle")


def draw(shape: str, colour: str) -> Image.Image:
    """One filled shape on white: the answer to "what is this" is then unambiguous."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    pen = ImageDraw.Draw(image)
    box = (16, 16, IMAGE_SIZE - 16, IMAGE_SIZE - 16)
    fill = COLOURS[colour]
    if shape == "square":
        pen.rectangle(box, fill=fill)
    elif shape == "circle":
        pen.ellipse(box, fill=fill)
    else:
        pen.polygon([(IMAGE_SIZE // 2, 12), (IMAGE_SIZE - 12, IMAGE_SIZE - 16), (12, IMAGE_SIZE - 16)], fill=fill)
    return image


def speak(text: str) -> np.ndarray:
    """espeak-ng speech (22.05 kHz) resampled to 16 kHz mono, so every file is small and in the model's rate."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        sys.exit("espeak-ng is not installed (e.g. `apt-get install espeak-ng`); cannot make the audio files")
    wav = subprocess.run([espeak, "-v", VOICE, "-s", "170", "--stdout", text], capture_output=True, check=True)
    with soundfile.SoundFile(io.BytesIO(wav.stdout)) as stream:
        samples, rate = stream.read(dtype="float32"), stream.samplerate
    positions = np.linspace(0, len(samples) - 1, int(len(samples) * SAMPLING_RATE / rate))
    return np.interp(positions, np.arange(len(samples)), samples).astype(np.float32)


def user(text: str, image: str | None = None, audio: str | None = None) -> dict:
    content = {"text": text}
    if image:
        content["image"] = image
    if audio:
        content["audio"] = audio
    return {"role": "user", "content": content}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": {"text": text}}


def build_records() -> list[dict]:
    """Four image-only, four audio-only, four image+audio conversations; the last one has two rounds."""
    pictures = [("square", "red"), ("circle", "green"), ("triangle", "blue"), ("square", "yellow")]
    spoken = ["red", "green", "blue", "yellow", "circle", "square"]
    records = []
    for shape, colour in pictures:
        image = f"images/{colour}_{shape}.jpg"
        records.append({"conversations": [user("What do you see?", image=image),
                                          assistant(f"A {colour} {shape} on a white background.")]})
    for word in spoken[:4]:
        records.append({"conversations": [user("Which word is spoken?", audio=f"audios/{word}.wav"),
                                          assistant(f"The speaker says \"{word}\".")]})
    for (shape, colour), word in zip(pictures, ["red", "blue", "circle", "square"], strict=True):
        image, audio = f"images/{colour}_{shape}.jpg", f"audios/{word}.wav"
        matches = word in (shape, colour)
        records.append({"conversations": [user("Does the spoken word match the picture?", image=image, audio=audio),
                                          assistant(f"{'Yes' if matches else 'No'}: the picture shows a {colour} "
                                                    f"{shape} and the speaker says \"{word}\".")]})
    records[-1]["conversations"] += [user("And what colour is it?"), assistant(f"It is {pictures[-1][1]}.")]
    return records


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    (TRAIN_DIR / "images").mkdir(exist_ok=True)
    (TRAIN_DIR / "audios").mkdir(exist_ok=True)
    records = build_records()
    for record in records:
        for turn in record["conversations"]:
            content = turn["content"]
            if "image" in content:
                colour, shape = Path(content["image"]).stem.split("_")
                draw(shape, colour).save(TRAIN_DIR / content["image"], quality=90)
            if "audio" in content:
                soundfile.write(TRAIN_DIR / content["audio"], speak(Path(content["audio"]).stem), SAMPLING_RATE)
    lines = [json.dumps(record, ensure_ascii=False) for record in records]
    (TRAIN_DIR / "records.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(records)} records to {TRAIN_DIR / 'records.jsonl'}")


if __name__ == "__main__":
    main()
