"""Processor cost per step for one 720x1480 image and one 30 s clip, and the processor's audio path against calling
transformers' WhisperFeatureExtractor directly on the same waveform (goal: ratio <= 1.1).

Steps: image decode (JPEG file -> RGB), slice (resize + crop into 7 slices), strips (patch layout + padding),
normalise ((x - 127.5) / 127.5 on the padded strips, which the model does on its device; timed here on CPU), audio decode (WAV file -> 16 kHz float), mel (Whisper features), and the
whole `process_multimodal_inputs` for a conversation holding both. Each figure is the median of --repeats runs;
the audio path and the direct Whisper call alternate so machine load hits both alike.

    python bench/processing.py --repeats 20
"""

import argparse
import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile
from measuring import timed
from output_folder import add_out_argument
from PIL import Image

from megrezo.tiny import cached_tiny_checkpoint


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    return statistics.median(timed(fn) for _ in range(repeats))


def make_inputs(folder: Path) -> tuple[Path, Path]:
    """A photo-like 720x1480 JPEG (smooth gradients plus noise) and 30 s of speech-band noise as WAV."""
    from megrezo.audio_processing import SAMPLING_RATE

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1480, 0:720]
    base = np.stack([x / 720 * 255, y / 1480 * 255, (x + y) % 256], axis=-1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    image_path, audio_path = folder / "image.jpg", folder / "audio.wav"
    Image.fromarray(pixels).save(image_path, quality=90)
    soundfile.write(audio_path, rng.uniform(-0.3, 0.3, 30 * SAMPLING_RATE).astype(np.float32), SAMPLING_RATE)
    return image_path, audio_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="runs per step; the median counts (default: 20)")
    add_out_argument(parser)
    args = parser.parse_args()
    # The package's processing modules import torch: loaded after --help has had its chance.
    from megrezo.audio_processing import SAMPLING_RATE, load_audio
    from megrezo.image_processing_megrezo import image_to_patch_strip, load_image, pad_slices, slice_image
    from megrezo.processing_megrezo import MegrezOProcessor

    processor = MegrezOProcessor.from_pretrained(cached_tiny_checkpoint(), trust_remote_code=True)
    image_settings = processor.image_processor
    whisper = processor.audio_feature_extractor
    with tempfile.TemporaryDirectory() as directory:
        image_path, audio_path = make_inputs(Path(directory))
        image = load_image(image_path)
        source, tiles, _ = slice_image(image, image_settings.scale_resolution, image_settings.max_slice_nums)
        wave = load_audio(audio_path)

        def strips() -> None:
            laid_out = [image_to_patch_strip(part) for part in [source, *tiles]]
            pad_slices([strip for strip, _ in laid_out], [size for _, size in laid_out])

        padded = pad_slices(*zip(*[image_to_patch_strip(part) for part in [source, *tiles]], strict=True))

        def processor_audio() -> None:
            processor.audio_clip_encoder(processor.process_audio(wave))

        def direct_whisper() -> None:
            whisper(wave, sampling_rate=SAMPLING_RATE, return_tensors="pt")

        conversation = [{"role": "user", "content": {"text": "Hi", "image": str(image_path), "audio": str(audio_path)}}]
        for warm_up in (processor_audio, direct_whisper, lambda: processor.process_multimodal_inputs(conversation)):
            warm_up()
        steps = {
            "image decode (JPEG 720x1480)": median_seconds(lambda: load_image(image_path), args.repeats),
            "image slice (7 slices)": median_seconds(
                lambda: slice_image(image, image_settings.scale_resolution, image_settings.max_slice_nums),
                args.repeats,
            ),
            "image strips (layout + pad)": median_seconds(strips, args.repeats),
            "image normalise (model side, CPU)": median_seconds(
                lambda: (padded["pixel_values"] - 127.5) / 127.5, args.repeats
            ),
            "audio decode (WAV 30 s)": median_seconds(lambda: load_audio(audio_path), args.repeats),
        }
        processor_times, direct_times = [], []
        for repeat in range(args.repeats):
            # alternate which one runs first, so neither always inherits the other's cache state
            for fn in (processor_audio, direct_whisper) if repeat % 2 == 0 else (direct_whisper, processor_audio):
                (processor_times if fn is processor_audio else direct_times).append(median_seconds(fn, 1))
        steps["mel, processor audio path (split + Whisper + lengths)"] = statistics.median(processor_times)
        steps["mel, WhisperFeatureExtractor directly"] = statistics.median(direct_times)
        steps["process_multimodal_inputs (image + audio files)"] = median_seconds(
            lambda: processor.process_multimodal_inputs(conversation), args.repeats
        )

    # per-pair ratios: each pair ran back to back, so a load spike from other processes mostly hits both
    ratio = statistics.median(p / d for p, d in zip(processor_times, direct_times, strict=True))
    width = max(len(name) for name in steps)
    print(f"{'step':<{width}}  ms (median of {args.repeats})")
    for name, seconds in steps.items():
        print(f"{name:<{width}}  {seconds * 1000:8.2f}")
    print(f"processor audio path / direct Whisper = {ratio:.3f} (median of per-pair ratios; goal <= 1.1)")

    out = args.out / "processing.json"
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "repeats": args.repeats,
        "milliseconds": {name: round(seconds * 1000, 3) for name, seconds in steps.items()},
        "audio_path_over_direct_whisper": round(ratio, 4),
        "goal": "audio_path_over_direct_whisper <= 1.1",
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
