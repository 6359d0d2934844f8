"""(Re)create the sample inputs used by the examples, tests and demo: a drawn picture and a spoken question.

Both are generated rather than downloaded so that the repository carries no third-party media and anyone can
rebuild them bit for bit: `python data/make_samples.py` (needs Pillow and the espeak-ng command).
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image, ImageDraw, ImageFont

DATA_DIR = Path(__file__).resolve().parent
IMAGE_PATH = DATA_DIR / "sample_image.jpg"
AUDIO_PATH = DATA_DIR / "sample_audio.wav"
IMAGE_SIZE = (640, 480)
QUESTION = "What shapes and colours do you see in this picture?"
VOICE = "en-gb"
WORDS_PER_MINUTE = 150


def draw_picture() -> Image.Image:
    """A scene with few, clearly coloured shapes, so a model's description of it is easy to check by eye."""
    width, height = IMAGE_SIZE
    horizon = height * 3 // 5
    picture = Image.new("RGB", IMAGE_SIZE, (135, 200, 235))
    draw = ImageDraw.Draw(picture)
    draw.rectangle((0, horizon, width, height), fill=(60, 160, 60))
    draw_sun(draw, centre=(540, 90), radius=45)
    draw.ellipse((90, 280, 230, 420), fill=(220, 30, 30), outline=(120, 0, 0), width=4)
    draw.rectangle((330, 290, 460, 420), fill=(30, 60, 220), outline=(0, 0, 110), width=4)
    font = ImageFont.load_default(size=56)
    draw.text((60, 60), "HELLO", font=font, fill=(20, 20, 20))
    return picture


def draw_sun(draw: ImageDraw.ImageDraw, centre: tuple[int, int], radius: int) -> None:
    """A yellow disc with twelve rays: recognisably a sun, not just another circle."""
    x, y = centre
    for angle in np.linspace(0, 2 * np.pi, 12, endpoint=False):
        inner = (x + 1.3 * radius * np.cos(angle), y + 1.3 * radius * np.sin(angle))
        outer = (x + 1.8 * radius * np.cos(angle), y + 1.8 * radius * np.sin(angle))
        draw.line((inner, outer), fill=(250, 210, 0), width=6)
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(255, 220, 0))


def speak(text: str) -> np.ndarray:
    """Synthesise `text` with espeak-ng (22.05 kHz) and bring it to the model's 16 kHz mono."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        sys.exit("espeak-ng is not installed (e.g. `apt-get install espeak-ng`); cannot make sample_audio.wav")
    command = [espeak, "-v", VOICE, "-s", str(WORDS_PER_MINUTE), "--stdout", text]
    wav_bytes = subprocess.run(command, capture_output=True, check=True).stdout
    from megrezo.audio_processing import load_audio  # imports torch: after --help

    return load_audio(wav_bytes)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=f"Writes {IMAGE_PATH} and {AUDIO_PATH}.").parse_args()
    from megrezo.audio_processing import SAMPLING_RATE

    question = speak(QUESTION)
    draw_picture().save(IMAGE_PATH, format="JPEG", quality=90)
    soundfile.write(AUDIO_PATH, np.clip(question, -1.0, 1.0), SAMPLING_RATE, subtype="PCM_16")
    for path in (IMAGE_PATH, AUDIO_PATH):
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
