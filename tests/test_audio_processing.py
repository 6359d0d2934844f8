"""Audio path of the processor: decoding, 30 s clips, span lengths (docs/contract.md §3) and Whisper features."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from transformers import WhisperFeatureExtractor

from megrezo.audio_processing import (
    CLIP_SAMPLES,
    MIN_CLIP_SAMPLES,
    SAMPLING_RATE,
    AudioFeatureExtractor,
    audio_span_length,
    load_audio,
    split_into_clips,
)


def sine(seconds: float, rate: int = SAMPLING_RATE, frequency: float = 440.0) -> np.ndarray:
    """A quiet tone: easy to compare after lossy coding and resampling."""
    time = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * time)).astype(np.float32)


def aligned_correlation(reference: np.ndarray, decoded: np.ndarray, max_lag: int = 2400) -> float:
    """Pearson correlation after shifting `decoded` by the lag that fits best: lossy codecs add a start delay."""
    best = -1.0
    length = min(len(reference), len(decoded)) - max_lag
    for lag in range(0, max_lag, 8):
        best = max(best, float(np.corrcoef(reference[:length], decoded[lag : lag + length])[0, 1]))
    return best


# Spans (docs/contract.md §3)


@pytest.mark.parametrize(("seconds", "span"), [(1, 27), (5, 127), (30, 752)])
def test_span_matches_spec_examples(seconds: int, span: int) -> None:
    assert audio_span_length(seconds * SAMPLING_RATE)[2] == span


def test_one_second_lengths_by_hand() -> None:
    # 16000 samples -> 100 mel frames -> convs: (100 - 1) // 2 + 1 = 50 -> pool: (50 - 2) // 2 + 1 = 25 -> span 27
    assert audio_span_length(16000) == (50, 25, 27)


def test_span_ignores_samples_past_30_seconds() -> None:
    assert audio_span_length(40 * SAMPLING_RATE) == audio_span_length(CLIP_SAMPLES) == (1500, 750, 752)


def test_shortest_clip_gives_one_frame_and_shorter_raises() -> None:
    assert MIN_CLIP_SAMPLES == 480
    assert audio_span_length(MIN_CLIP_SAMPLES) == (2, 1, 3)
    with pytest.raises(ValueError, match="too short"):
        audio_span_length(MIN_CLIP_SAMPLES - 1)


# Clips


def test_65_seconds_become_three_clips_with_nothing_dropped() -> None:
    wave = np.random.default_rng(0).uniform(-1, 1, 65 * SAMPLING_RATE).astype(np.float32)
    clips = split_into_clips(wave)
    assert [len(clip) for clip in clips] == [CLIP_SAMPLES, CLIP_SAMPLES, 5 * SAMPLING_RATE]
    np.testing.assert_array_equal(np.concatenate(clips), wave)
    assert [audio_span_length(len(clip))[2] for clip in clips] == [752, 752, 127]


def test_exactly_30_seconds_is_one_clip() -> None:
    assert [len(clip) for clip in split_into_clips(np.zeros(CLIP_SAMPLES, np.float32))] == [CLIP_SAMPLES]


def test_short_tail_borrows_from_previous_clip() -> None:
    wave = np.random.default_rng(1).uniform(-1, 1, CLIP_SAMPLES + 100).astype(np.float32)
    clips = split_into_clips(wave)
    assert [len(clip) for clip in clips] == [CLIP_SAMPLES + 100 - MIN_CLIP_SAMPLES, MIN_CLIP_SAMPLES]
    np.testing.assert_array_equal(np.concatenate(clips), wave)
    assert all(audio_span_length(len(clip))[1] >= 1 for clip in clips)


def test_tail_of_exactly_the_minimum_is_kept_as_is() -> None:
    clips = split_into_clips(np.zeros(CLIP_SAMPLES + MIN_CLIP_SAMPLES, np.float32))
    assert [len(clip) for clip in clips] == [CLIP_SAMPLES, MIN_CLIP_SAMPLES]


def test_very_short_audio_is_padded_with_silence() -> None:
    wave = np.full(100, 0.25, np.float32)
    (clip,) = split_into_clips(wave)
    assert len(clip) == MIN_CLIP_SAMPLES
    np.testing.assert_array_equal(clip[:100], wave)
    assert not clip[100:].any()


def test_split_rejects_empty_or_multichannel() -> None:
    with pytest.raises(ValueError, match="non-empty 1-D"):
        split_into_clips(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        split_into_clips(np.zeros((2, 1000), np.float32))


# Features


def test_features_equal_direct_whisper_call() -> None:
    wave = np.random.default_rng(2).normal(0, 0.1, 65 * SAMPLING_RATE).astype(np.float32)
    clips = split_into_clips(wave)
    encoding = AudioFeatureExtractor()(clips)
    direct = WhisperFeatureExtractor(feature_size=128)
    expected = np.concatenate(
        [direct(clip, sampling_rate=SAMPLING_RATE, return_tensors="np")["input_features"] for clip in clips]
    )
    assert encoding["input_audios"].shape == (3, 128, 3000)
    assert encoding["input_audios"].dtype == torch.float32
    np.testing.assert_allclose(encoding["input_audios"].numpy(), expected, atol=1e-5)
    assert encoding["input_audio_lengths"].tolist() == [[1500, 750], [1500, 750], [250, 125]]
    assert encoding["input_audio_lengths"].dtype == torch.long
    assert encoding["audio_span_tokens"].tolist() == [752, 752, 127]
    assert encoding["audio_span_tokens"].dtype == torch.long
    assert "audio_bounds" not in encoding


def test_feature_extractor_rejects_no_clips() -> None:
    with pytest.raises(ValueError, match="no audio clips"):
        AudioFeatureExtractor()([])


# Loading


LOSSLESS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16")}
LOSSY = {"ogg": ("OGG", "VORBIS"), "mp3": ("MP3", "MPEG_LAYER_III")}


def write_or_skip(path: Path, wave: np.ndarray, rate: int, format_name: str, subtype: str) -> None:
    """Write with soundfile, skipping the test where the installed libsndfile lacks the format."""
    if not soundfile.check_format(format_name, subtype):
        pytest.skip(f"libsndfile {soundfile.__libsndfile_version__} cannot write {format_name}/{subtype}")
    soundfile.write(path, wave, rate, format=format_name, subtype=subtype)


@pytest.mark.parametrize("suffix", sorted(LOSSLESS | LOSSY))
def test_round_trip_through_file(tmp_path: Path, suffix: str) -> None:
    wave = sine(2.0)
    path = tmp_path / f"tone.{suffix}"
    write_or_skip(path, wave, SAMPLING_RATE, *(LOSSLESS | LOSSY)[suffix])
    loaded = load_audio(path)
    assert loaded.dtype == np.float32 and loaded.ndim == 1
    if suffix in LOSSLESS:
        assert len(loaded) == len(wave)
        np.testing.assert_allclose(loaded, wave, atol=1e-4)
    else:
        assert abs(len(loaded) - len(wave)) <= 2400  # encoder delay and frame padding
        assert aligned_correlation(wave, loaded) > 0.99


def test_string_path_and_bytes_give_the_same_samples(tmp_path: Path) -> None:
    path = tmp_path / "tone.flac"
    soundfile.write(path, sine(1.0), SAMPLING_RATE, format="FLAC")
    from_path = load_audio(str(path))
    np.testing.assert_array_equal(load_audio(path.read_bytes()), from_path)
    np.testing.assert_array_equal(load_audio(bytearray(path.read_bytes())), from_path)


def test_stereo_44k_file_becomes_16k_mono(tmp_path: Path) -> None:
    left = sine(2.0, rate=44100)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, 0.5 * left], axis=1), 44100, subtype="FLOAT")
    loaded = load_audio(path)
    assert len(loaded) == 2 * SAMPLING_RATE
    np.testing.assert_allclose(loaded[1000:-1000], 0.75 * sine(2.0)[1000:-1000], atol=1e-2)


def test_8k_array_is_resampled() -> None:
    loaded = load_audio(sine(1.5, rate=8000), sampling_rate=8000)
    assert loaded.dtype == np.float32 and len(loaded) == int(1.5 * SAMPLING_RATE)
    assert aligned_correlation(sine(1.5), loaded, max_lag=64) > 0.99


def test_16k_array_passes_through_unchanged() -> None:
    wave = sine(1.0)
    np.testing.assert_array_equal(load_audio(wave), wave)
    np.testing.assert_array_equal(load_audio(wave.astype(np.float64), sampling_rate=SAMPLING_RATE), wave)


def test_tensor_and_channel_first_arrays_are_averaged() -> None:
    wave = sine(1.0)
    stereo = np.stack([wave, np.zeros_like(wave)])
    np.testing.assert_allclose(load_audio(stereo), 0.5 * wave)
    np.testing.assert_allclose(load_audio(stereo.T), 0.5 * wave)
    np.testing.assert_allclose(load_audio(torch.from_numpy(stereo)), 0.5 * wave)
    np.testing.assert_allclose(load_audio(torch.from_numpy(wave).bfloat16()), wave, atol=4e-3)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_m4a_goes_through_ffmpeg(tmp_path: Path) -> None:
    source, target = tmp_path / "tone.wav", tmp_path / "tone.m4a"
    soundfile.write(source, sine(2.0, rate=44100), 44100)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(source), str(target)], check=True)
    loaded = load_audio(target)
    assert abs(len(loaded) - 2 * SAMPLING_RATE) <= 2400
    assert aligned_correlation(sine(2.0), loaded) > 0.99
    np.testing.assert_array_equal(load_audio(target.read_bytes()), loaded)


# Bad input


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.wav"
    with pytest.raises(FileNotFoundError, match="not found.*nowhere.wav"):
        load_audio(path)


def test_garbage_wav_cannot_be_decoded(tmp_path: Path) -> None:
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"this is not audio at all" * 20)
    with pytest.raises(ValueError, match="could not decode audio.*garbage.wav"):
        load_audio(path)


def test_garbage_bytes_cannot_be_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match="could not decode audio.*480 bytes.*ffmpeg"):
        load_audio(b"this is not audio at all" * 20)


def test_container_without_ffmpeg_names_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "voice.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(64))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match="could not decode audio.*voice.m4a.*ffmpeg"):
        load_audio(path)


def test_unsupported_type_is_named() -> None:
    with pytest.raises(ValueError, match="unsupported audio type dict"):
        load_audio({"path": "a.wav"})


def test_empty_audio_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        load_audio(np.zeros(0, np.float32))
    path = tmp_path / "empty.wav"
    soundfile.write(path, np.zeros(0, np.float32), SAMPLING_RATE)
    with pytest.raises(ValueError, match="empty.*empty.wav"):
        load_audio(path)


def test_non_finite_samples_are_rejected() -> None:
    wave = sine(0.1)
    wave[10] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        load_audio(wave)


def test_integer_and_high_rank_arrays_are_rejected() -> None:
    with pytest.raises(ValueError, match="floating-point.*int16"):
        load_audio(np.zeros(100, np.int16))
    with pytest.raises(ValueError, match="shape"):
        load_audio(np.zeros((2, 2, 100), np.float32))


def test_sampling_rate_is_refused_for_files(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    soundfile.write(path, sine(0.5), SAMPLING_RATE)
    with pytest.raises(ValueError, match="sampling_rate"):
        load_audio(path, sampling_rate=22050)
