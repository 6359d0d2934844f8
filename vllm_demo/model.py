"""Megrez-3B-Omni as a vLLM (V1 engine) model: vLLM's Llama and NaViT SigLIP, megrezo's resampler and audio
encoder, under the release checkpoint's tensor names (`llm.`, `vision.vpm.`, `vision.resampler.`, `audio.audio.`).

vLLM composes the input embeddings itself: it embeds the prompt's tokens and overwrites the positions that the
multimodal processor marked (the `<|unk|>` fillers of each item's layout) with the vectors `embed_multimodal`
returns, item by item. So this class only has to turn one item's tensors into exactly as many vectors as its layout
has fillers: 64 per image slice, T2 + 2 per audio clip (begin vector, frames, end vector).

Encoders run item by item, each on its own slices or clips, so an item's vectors are the same whatever else is in
the batch; that keeps batched generation equal to generation alone and matches `MegrezO.compose_embeddings`.
"""

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.idefics2_vision_model import Idefics2VisionTransformer
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.utils import AutoWeightsLoader, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from megrezo.audio import AudioTower
from megrezo.configuration_megrezo import MegrezOConfig
from megrezo.resampler import Resampler

from .processing import MegrezODummyInputsBuilder, MegrezOMultiModalProcessor, MegrezOProcessingInfo

PIXEL_CENTER = 127.5
"""Slices arrive as 0..255 pixels; the vision tower reads (x - 127.5) / 127.5, as `megrezo.vision` does."""


class MegrezOVisionTower(nn.Module):
    """`vision`: `vpm` is vLLM's Idefics2 NaViT SigLIP, which reads the same patch strips, `tgt_sizes` and padding
    mask as megrezo's. `resampler` is megrezo's: vLLM's MiniCPM-V resampler computes the same cross-attention, but
    its forward calls `torch.cuda.is_current_stream_capturing()`, which raises on CPU builds of torch, and it builds
    its sin/cos table in float32 numpy rather than the HF model's float64-then-float32."""

    def __init__(self, config: MegrezOConfig, prefix: str = "") -> None:
        super().__init__()
        vision_config = config.vision_config
        self.patch_size = vision_config.patch_size
        self.chunk_size = config.vision_batch_size
        self.vpm = Idefics2VisionTransformer(
            vision_config, apply_encoder_attention_mask=True, prefix=maybe_prefix(prefix, "vpm")
        )
        if config.drop_vision_last_layer:
            self.vpm.encoder.layers = self.vpm.encoder.layers[:-1]
        self.resampler = Resampler(
            num_queries=config.query_num,
            embed_dim=config.hidden_size,
            num_heads=config.resampler_num_heads,
            kv_dim=vision_config.hidden_size,
        )

    def forward(self, pixel_values: torch.Tensor, tgt_sizes: torch.Tensor) -> torch.Tensor:
        """One image's slices [S, 3, 14, P*14] (uint8 pixels) and (rows, cols) [S, 2] -> [S * query_num, hidden].

        Slices go through in chunks of `vision_batch_size`, each cut to its own longest slice, like `megrezo.vision`.
        """
        tgt_sizes = tgt_sizes.to(pixel_values.device)
        outputs = []
        for start in range(0, len(pixel_values), self.chunk_size):
            sizes = tgt_sizes[start : start + self.chunk_size]
            counts = sizes[:, 0] * sizes[:, 1]
            longest = int(counts.max())
            strips = pixel_values[start : start + self.chunk_size, :, :, : longest * self.patch_size]
            strips = (strips.to(self.vpm.embeddings.patch_embedding.weight.dtype) - PIXEL_CENTER) / PIXEL_CENTER
            mask = torch.arange(longest, device=strips.device)[None, :] < counts[:, None]
            features = self.vpm(strips, patch_attention_mask=mask[:, None, :], tgt_sizes=sizes)
            outputs.append(self.resampler(features, sizes, mask))
        return torch.cat(outputs).flatten(0, 1)


def _items(value: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    """vLLM hands a batched field over as one stacked tensor when all items have the same shape, else as a list."""
    return list(value) if isinstance(value, torch.Tensor) else value


@MULTIMODAL_REGISTRY.register_processor(
    MegrezOMultiModalProcessor, info=MegrezOProcessingInfo, dummy_inputs=MegrezODummyInputsBuilder
)
class MegrezOForVLLM(nn.Module, SupportsMultiModal):
    """The checkpoint's `MegrezO` architecture for vLLM."""

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        """What vLLM's chat rendering puts in a message per media item; the same text as the project's chat
        template (`megrezo.chat_template`), so served prompts read like `model.chat`'s. `i` counts from 1."""
        if modality.startswith("image"):
            return "(<image>./</image>)"
        if modality.startswith("audio"):
            return f"Audio {i}: (<audio>./</audio>)"
        raise ValueError(f"Megrez-3B-Omni reads images and audio, not {modality}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: MegrezOConfig = vllm_config.model_config.hf_config
        self.config = config
        with self._mark_language_model(vllm_config):
            self.llm = LlamaForCausalLM(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "llm"))
        with self._mark_tower_model(vllm_config, "image"):
            self.vision = MegrezOVisionTower(config, prefix=maybe_prefix(prefix, "vision"))
        with self._mark_tower_model(vllm_config, "audio"):
            self.audio = AudioTower(config.audio_config)
        self.make_empty_intermediate_tensors = self.llm.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """Vectors per item, in item order: [64 * slices, hidden] per image, [sum(T2 + 2), hidden] per audio item."""
        embeddings: list[torch.Tensor] = []
        if kwargs.get("pixel_values") is not None:
            for pixels, sizes in zip(_items(kwargs["pixel_values"]), _items(kwargs["tgt_sizes"]), strict=True):
                embeddings.append(self.vision(pixels, sizes))
        if kwargs.get("audio_features") is not None:
            for features, lengths in zip(
                _items(kwargs["audio_features"]), _items(kwargs["audio_lengths"]), strict=True
            ):
                embeddings.append(self.audio.audio(features, lengths.to(features.device)))
        return embeddings

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        return self.llm.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.llm.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """The release's names load as they are: `llm.*` through vLLM's Llama loader (which packs q/k/v and
        gate/up), `vision.vpm.*` through the Idefics2 loader, the rest by name."""
        return AutoWeightsLoader(self).load_weights(weights)
