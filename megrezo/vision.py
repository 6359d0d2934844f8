"""The vision path: normalise slices, run the NaViT SigLIP tower and the resampler in chunks of slices."""

import torch
from torch import nn

from .batch_format import ImageEncoding
from .configuration_megrezo import MegrezOConfig
from .modeling_navit_siglip import NavitSiglipVisionTransformer
from .resampler import Resampler


def strip_patch_mask(tgt_sizes: torch.Tensor, max_patches: int) -> torch.Tensor:
    """[N, P] bool: the first rows*cols patches of each strip are real."""
    counts = (tgt_sizes[:, 0] * tgt_sizes[:, 1]).to(tgt_sizes.device)
    return torch.arange(max_patches, device=tgt_sizes.device)[None, :] < counts[:, None]


class VisionTower(nn.Module):
    """`vision`: holds `vpm` (SigLIP) and `resampler`, the released naming."""

    def __init__(self, config: MegrezOConfig):
        super().__init__()
        vision_config = config.vision_config
        self.patch_size = vision_config.patch_size
        self.chunk_size = config.vision_batch_size
        self.vpm = NavitSiglipVisionTransformer(vision_config)
        self.resampler = Resampler(
            num_queries=config.query_num,
            embed_dim=config.hidden_size,
            num_heads=config.resampler_num_heads,
            kv_dim=vision_config.hidden_size,
        )

    def forward(self, encoding: ImageEncoding) -> torch.Tensor:
        """Pixel strips (0..255) -> [N, query_num, hidden]: 64 LLM vectors per slice, in slice order.

        Each chunk of `vision_batch_size` slices is cut to its own longest slice; the padding beyond it is masked
        anyway, so the result does not depend on chunking or on the other slices of the batch.
        """
        pixel_values, tgt_sizes = encoding["pixel_values"], encoding["tgt_sizes"]
        tgt_sizes = tgt_sizes.to(pixel_values.device)
        outputs = []
        for start in range(0, len(pixel_values), self.chunk_size):
            sizes = tgt_sizes[start : start + self.chunk_size]
            max_patches = int((sizes[:, 0] * sizes[:, 1]).max())
            strips = pixel_values[start : start + self.chunk_size, :, :, : max_patches * self.patch_size]
            strips = (strips - 127.5) / 127.5
            mask = strip_patch_mask(sizes, max_patches)
            features = self.vpm(strips, sizes, mask)
            outputs.append(self.resampler(features, sizes, mask))
        return torch.cat(outputs, dim=0)
