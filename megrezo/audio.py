"""The audio path: Whisper-large-v3 encoder in the Qwen-Audio layout, 2x average pool, projector, begin/end vectors.

Clips are padded to 30 s of mel features, but the encoder only runs on the frames the longest clip of the batch
needs, and padded frames are masked out of attention. Each clip enters the convolutions cut to its own 2*T1 mel
frames (later frames are zero), as the authors' encoder computes a clip on its own: the convolution's right padding
at a clip's last frame is zero, not the next mel frame. So a clip's vectors do not depend on what else is in the
batch.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .batch_format import AudioEncoding
from .configuration_megrezo import MegrezOAudioConfig


def whisper_sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed position table [length, channels]: sines then cosines. Used only to initialise new weights;
    a checkpoint's stored table always wins."""
    log_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_increment * torch.arange(channels // 2, dtype=torch.float64))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv_timescales[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


class AudioAttention(nn.Module):
    def __init__(self, config: MegrezOAudioConfig):
        super().__init__()
        n_state = config.n_state
        self.config = config
        self.n_head = config.n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x [A, T, n_state], key_mask [A, T] (True = real frame). `eager` computes the softmax by hand; every other
        implementation (flash-attention included) goes through torch's SDPA, which handles the key mask."""
        batch, frames, width = x.shape
        heads = [
            proj(x).view(batch, frames, self.n_head, -1).transpose(1, 2) for proj in (self.query, self.key, self.value)
        ]
        mask = key_mask[:, None, None, :]
        if self.config._attn_implementation == "eager":
            q, k, v = heads
            scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            attended = scores.softmax(dim=-1) @ v
        else:
            attended = F.scaled_dot_product_attention(*heads, attn_mask=mask)
        return self.out(attended.transpose(1, 2).reshape(batch, frames, width))


class AudioBlock(nn.Module):
    """Pre-LN transformer block: `attn`, `attn_ln`, `mlp` (Linear, GELU, Linear), `mlp_ln`."""

    def __init__(self, config: MegrezOAudioConfig):
        super().__init__()
        n_state = config.n_state
        self.attn = AudioAttention(config)
        self.attn_ln = nn.LayerNorm(n_state)
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), key_mask)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    """The released `audio.audio`: conv1, conv2, positional_embedding, blocks, ln_post, proj, audio_bos_eos_token."""

    def __init__(self, config: MegrezOAudioConfig):
        super().__init__()
        n_state = config.n_state
        self.conv1 = nn.Conv1d(config.n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", whisper_sinusoids(config.n_ctx, n_state))
        self.blocks = nn.ModuleList([AudioBlock(config) for _ in range(config.n_layer)])
        self.ln_post = nn.LayerNorm(n_state)
        self.proj = nn.Linear(n_state, config.output_dim)
        self.audio_bos_eos_token = nn.Embedding(2, config.output_dim)
        self.gradient_checkpointing = False

    def encode_frames(self, mel: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
        """mel [A, n_mels, M], t1 [A] -> transformer output [A, max(t1), n_state], padded frames zeroed.

        Clip a's mel frames from 2*t1[a] on are zero before `conv1` (the frame-edge rule of the contract): the
        authors cut the features to 2*T1 frames, so the kernel at the last kept frame sees zero padding. Beyond
        2*max(t1) nothing reaches a kept output, so the batch is cut there.
        """
        longest = int(t1.max())
        dtype = self.conv1.weight.dtype
        mel = mel[:, :, : 2 * longest].to(dtype)
        kept = torch.arange(mel.shape[2], device=mel.device)[None, :] < 2 * t1[:, None].to(mel.device)
        x = F.gelu(self.conv1(mel * kept[:, None, :].to(dtype)))
        x = F.gelu(self.conv2(x))[:, :, :longest].transpose(1, 2)
        key_mask = torch.arange(longest, device=x.device)[None, :] < t1[:, None].to(x.device)
        x = (x + self.positional_embedding[:longest].to(dtype)) * key_mask[..., None]
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, key_mask, use_reentrant=False)
            else:
                x = block(x, key_mask)
        return x * key_mask[..., None]

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """mel [A, n_mels, M], lengths [A, 2] (T1, T2) -> the clips' span vectors concatenated, [sum(T2 + 2), dim].

        Each span is the begin vector, T2 pooled and projected frames, then the end vector.
        """
        frames = self.encode_frames(mel, lengths[:, 0])
        pooled = F.avg_pool1d(frames.transpose(1, 2), kernel_size=2, stride=2).transpose(1, 2)
        projected = self.proj(self.ln_post(pooled))
        begin, end = self.audio_bos_eos_token.weight
        spans = []
        for clip, t2 in zip(projected, lengths[:, 1].tolist(), strict=True):
            spans.extend([begin[None], clip[:t2], end[None]])
        return torch.cat(spans, dim=0)


class AudioTower(nn.Module):
    """`audio`: holds the encoder as `audio.audio`, the released naming."""

    def __init__(self, config: MegrezOAudioConfig):
        super().__init__()
        self.audio = AudioEncoder(config)

    def forward(self, encoding: AudioEncoding) -> torch.Tensor:
        return self.audio(encoding["input_audios"], encoding["input_audio_lengths"])
