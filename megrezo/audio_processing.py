"""Audio input of Megrez-3B-Omni: decoding, 30 s clips, span lengths and Whisper features.

The audio tower is the Whisper-large-v3 encoder, which sees at most 30 s at a time. So a waveform is decoded to
16 kHz mono float32, cut into consecutive clips of at most 30 s (nothing is dropped), and each clip becomes
128-bin log-mel features padded to 3000 frames plus the lengths that tell the model how many positions the clip
fills in the text (docs/contract.md §3).

This module is shipped next to a checkpoint as remote code, so it imports only within the package and loads
librosa lazily (its first import takes seconds).
"""

import io
import shutil
import struct
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperFeatureExtractor

from .audio_lengths import conv_frames, pooled_frames
from .batch_format import AudioEncoding

SAMPLING_RATE = 16000
CLIP_SECONDS = 30
CLIP_SAMPLES = SAMPLING_RATE * CLIP_SECONDS
HOP_LENGTH = 160
MEL_BINS = 128
MIN_CLIP_SAMPLES = 3 * HOP_LENGTH
"""The shortest clip the encoder accepts: 3 mel frames give T1 = 2 and T2 = 1; anything shorter gives T2 = 0."""
MAX_FLOAT_PEAK = 2.0
"""Float samples belong in [-1, 1]. Mixing or resampling can overshoot a little, so peaks up to 2 pass; anything
larger is integer PCM stored as floats (e.g. int16 values up to 32767), which would feed the encoder garbage."""

_SOUNDFILE_SUFFIXES = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff"})
"""Containers libsndfile reads itself; everything else (m4a, webm, mp4, aac, ...) goes through ffmpeg."""


def load_audio(source: object, sampling_rate: int | None = None) -> np.ndarray:
    """Return `source` as float32 mono samples at 16 kHz, the only form the rest of the pipeline handles.

    `source` is a path (str or Path) or the raw bytes of an audio file, or a float numpy array / torch tensor of
    samples: 1-D mono, or 2-D with channels on the shorter axis (averaged to mono). `sampling_rate` is the rate of
    such an array (default 16000); files carry their own rate, so it must stay None for them. Other rates are
    resampled. Raises FileNotFoundError for a missing file and ValueError for anything else that cannot become a
    usable waveform, naming the problem and the source.
    """
    if isinstance(source, (np.ndarray, torch.Tensor)):
        wave, description = _samples_from_array(source), f"array of shape {tuple(source.shape)}"
        rate = SAMPLING_RATE if sampling_rate is None else checked_sampling_rate(sampling_rate)
    elif sampling_rate is not None:
        raise ValueError(f"sampling_rate is for sample arrays; an audio file carries its own (got {sampling_rate})")
    elif isinstance(source, (str, Path)):
        wave, rate = _decode_file(Path(source))
        description = f"file {source}"
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ValueError("audio is empty (zero bytes): expected the bytes of an audio file")
        wave, rate = _decode_bytes(bytes(source))
        description = f"{len(source)} bytes"
    else:
        raise ValueError(
            f"unsupported audio type {type(source).__name__}: expected a path, bytes, a numpy array or a torch tensor"
        )
    _check_samples(wave, description)
    return _resample(wave, rate, SAMPLING_RATE)


def checked_sampling_rate(value: object) -> int:
    """The rate of a sample array as a positive whole number of Hz; 16000.0 is accepted, "16000" is not (a string
    rate is a mistake somewhere upstream, better named than guessed)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"sampling_rate must be a number of Hz, got {value!r} ({type(value).__name__})")
    if not float(value).is_integer() or value <= 0:
        raise ValueError(f"sampling_rate must be a positive whole number of Hz, got {value!r}")
    return int(value)


def _samples_from_array(samples: np.ndarray | torch.Tensor) -> np.ndarray:
    """Mono float32 from caller-supplied samples; integer PCM is refused because its scale is ambiguous."""
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu()
        samples = samples.float().numpy() if samples.is_floating_point() else samples.numpy()
    if not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(f"audio array must hold floating-point samples in [-1, 1], got dtype {samples.dtype}")
    if samples.ndim == 2:
        channel_axis = 0 if samples.shape[0] <= samples.shape[1] else 1
        samples = samples.mean(axis=channel_axis)
    elif samples.ndim != 1:
        raise ValueError(f"audio array must be 1-D (mono) or 2-D (channels), got shape {tuple(samples.shape)}")
    return np.asarray(samples, dtype=np.float32)


def _check_samples(wave: np.ndarray, description: str) -> None:
    """Reject waveforms that would silently produce garbage features further down. One rule for every source: a
    float WAV file holding peaks of 300 is the same mistake as an array holding them (libsndfile returns a float
    file's samples unscaled), so files, bytes and arrays all go through the peak check here."""
    if wave.size == 0:
        raise ValueError(f"audio is empty (zero samples): {description}")
    if not np.isfinite(wave).all():
        raise ValueError(f"audio contains non-finite samples (NaN or inf): {description}")
    peak = float(np.abs(wave).max())
    if peak > MAX_FLOAT_PEAK:
        raise ValueError(
            f"audio must hold floating-point samples in [-1, 1], but its peak is {peak:g} ({description}): integer "
            "PCM stored as floats? Divide int16 samples by 32768, or re-export the file as 16-bit PCM"
        )


def _decode_file(path: Path) -> tuple[np.ndarray, int]:
    """Decode with libsndfile; then librosa for the containers libsndfile should know, ffmpeg for the others."""
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"audio file is empty (zero bytes): {path}")
    with open(path, "rb") as file:
        _check_wav_is_complete(file.read(4096), path.stat().st_size, f"file {path}")
    try:
        return _read_with_soundfile(path)
    except Exception as soundfile_error:
        if path.suffix.lower() not in _SOUNDFILE_SUFFIXES:
            return _decode_with_ffmpeg(path, f"file {path}"), SAMPLING_RATE
        try:
            return _read_with_librosa(path)
        except Exception:
            raise ValueError(f"could not decode audio file {path}: {soundfile_error}") from soundfile_error


def _decode_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """Raw file bytes have no name to go by, so try libsndfile and then ffmpeg on a temporary copy."""
    _check_wav_is_complete(data[:4096], len(data), f"{len(data)} bytes")
    try:
        return _read_with_soundfile(io.BytesIO(data))
    except Exception as soundfile_error:
        if shutil.which("ffmpeg") is None:
            raise ValueError(
                f"could not decode audio from {len(data)} bytes: {soundfile_error}; "
                "install ffmpeg to decode containers such as m4a or webm"
            ) from soundfile_error
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "audio"
        path.write_bytes(data)
        return _decode_with_ffmpeg(path, f"{len(data)} bytes"), SAMPLING_RATE


STREAMED_WAV_SIZES = (0, 0xFFFFFFFF, 0x7FFFF000)
"""`data` chunk sizes that writers put in a WAV header before they know the length."""


def _check_wav_is_complete(head: bytes, file_size: int, description: str) -> None:
    """Refuse a WAV file whose `data` chunk claims more bytes than the file holds. libsndfile reads such a file
    without complaint and returns whatever is there (one sample, or half the recording), so a file cut off in a
    download or copy would silently become different audio. Streams written before their length was known (size
    0, 0xFFFFFFFF, or 0x7FFFF000 as espeak-ng --stdout writes) and RF64 files are left to the decoder."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    offset = 12
    while offset + 8 <= len(head):
        chunk_id, chunk_size = head[offset : offset + 4], struct.unpack("<I", head[offset + 4 : offset + 8])[0]
        if chunk_id == b"data":
            available = file_size - (offset + 8)
            if chunk_size not in STREAMED_WAV_SIZES and chunk_size > available:
                raise ValueError(
                    f"truncated WAV audio: its header promises {chunk_size} bytes of samples but only {available} "
                    f"follow ({description}); the file was cut off, re-export or re-download it"
                )
            return
        offset += 8 + chunk_size + (chunk_size & 1)


def _read_with_soundfile(file: Path | io.BytesIO) -> tuple[np.ndarray, int]:
    """libsndfile decodes wav, flac, ogg/vorbis/opus and (since 1.1) mp3 without a subprocess."""
    import soundfile

    samples, rate = soundfile.read(file, dtype="float32", always_2d=True)
    return samples.mean(axis=1), rate


def _read_with_librosa(path: Path) -> tuple[np.ndarray, int]:
    """librosa falls back to audioread, which reaches decoders an older libsndfile lacks (mp3 before 1.1)."""
    import librosa

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples, rate = librosa.load(path, sr=None, mono=True, dtype=np.float32)
    return samples, int(rate)


def _decode_with_ffmpeg(path: Path, description: str) -> np.ndarray:
    """Let ffmpeg decode, downmix and resample to 16 kHz in one pass, reading raw float32 from its stdout."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise ValueError(f"could not decode audio {description}: this container needs the ffmpeg command on PATH")
    command = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path)]
    command += ["-f", "f32le", "-acodec", "pcm_f32le", "-ac", "1", "-ar", str(SAMPLING_RATE), "-"]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip() or f"ffmpeg exited with {result.returncode}"
        raise ValueError(f"could not decode audio {description}: {reason}")
    return np.frombuffer(result.stdout, dtype="<f4").astype(np.float32)


def _resample(wave: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Resample with soxr (what librosa.resample uses by default) only when the rate differs."""
    if rate == target_rate:
        return np.ascontiguousarray(wave, dtype=np.float32)
    if rate <= 0:
        raise ValueError(f"sampling_rate must be positive, got {rate}")
    import soxr

    return soxr.resample(wave, rate, target_rate).astype(np.float32)


def split_into_clips(wave: np.ndarray) -> list[np.ndarray]:
    """Cut a 16 kHz waveform into consecutive clips of at most 30 s, because the encoder sees 30 s at a time.

    Nothing is dropped: the clips concatenate back to the input. Every clip gives the encoder at least one frame
    (MIN_CLIP_SAMPLES = 480 samples, 30 ms):
    - a tail shorter than that takes the samples it lacks from the end of the clip before it (that clip becomes
      slightly shorter than 30 s), so no silence is invented and nothing is counted twice;
    - a whole waveform shorter than that is one clip, padded with trailing zeros to 480 samples; Whisper pads
      every clip with zeros to 30 s anyway, so this only makes the clip long enough to be counted.
    """
    if wave.ndim != 1 or wave.size == 0:
        raise ValueError(f"expected a non-empty 1-D waveform, got shape {wave.shape}")
    if wave.size < MIN_CLIP_SAMPLES:
        return [np.pad(wave, (0, MIN_CLIP_SAMPLES - wave.size))]
    starts = list(range(0, wave.size, CLIP_SAMPLES))
    if wave.size - starts[-1] < MIN_CLIP_SAMPLES:
        starts[-1] = wave.size - MIN_CLIP_SAMPLES
    ends = starts[1:] + [wave.size]
    return [wave[start:end] for start, end in zip(starts, ends, strict=True)]


def audio_span_length(num_samples: int) -> tuple[int, int, int]:
    """(T1, T2, span) for a clip of `num_samples` samples: frames after the convolutions, after the average pool,
    and the text positions the clip occupies (begin vector, T2 frames, end vector). Samples past 30 s are not seen.
    """
    t1 = conv_frames(min(num_samples, CLIP_SAMPLES) // HOP_LENGTH)
    t2 = pooled_frames(t1)
    if t2 < 1:
        raise ValueError(f"audio clip of {num_samples} samples is too short: at least {MIN_CLIP_SAMPLES} are needed")
    return t1, t2, t2 + 2


class AudioFeatureExtractor:
    """Turns clips into the AudioEncoding tensors (all but `audio_bounds`, which depend on the text layout).

    A thin wrapper: one batched WhisperFeatureExtractor call for the features, integer arithmetic for the lengths,
    so it costs no more than calling Whisper's extractor directly.
    """

    def __init__(self, whisper: WhisperFeatureExtractor | None = None) -> None:
        self.whisper = whisper or WhisperFeatureExtractor(feature_size=MEL_BINS, sampling_rate=SAMPLING_RATE)

    def __call__(self, clips: Sequence[np.ndarray]) -> AudioEncoding:
        """Features [A,128,3000] float32, lengths [A,2] long (T1, T2) and spans [A] long for clips of <= 30 s."""
        if not clips:
            raise ValueError("no audio clips to encode")
        lengths = [audio_span_length(len(clip)) for clip in clips]
        features = self.whisper(list(clips), sampling_rate=SAMPLING_RATE, return_tensors="pt")["input_features"]
        return AudioEncoding(
            input_audios=features,
            input_audio_lengths=torch.tensor([[t1, t2] for t1, t2, _ in lengths], dtype=torch.long),
            audio_span_tokens=torch.tensor([span for _, _, span in lengths], dtype=torch.long),
        )
