"""SigLIP-so400m vision tower in its NaViT form: slices of any size, as strips of 14x14 patches.

The encoder layers are transformers' own SigLIP layers (same tensor names as the release); what this file adds is
the variable-resolution front end: patch strips instead of square images, and position ids that map each slice's
patch grid onto the 70x70 position table by bucketing fractional coordinates, so a slice of any shape reuses the
table learned at 980x980.
"""

import torch
from torch import nn
from transformers import SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipEncoder

from .compat import bidirectional_attention_mask


def bucketed_position_ids(rows: int, cols: int, grid_side: int, device: torch.device) -> torch.Tensor:
    """Position-table ids of a rows x cols patch grid, row-major.

    Each patch's fractional coordinate (i/rows, j/cols) is bucketised against the boundaries k/grid_side, so the
    slice's grid is stretched over the whole grid_side x grid_side table whatever its own size.
    """
    boundaries = torch.arange(1 / grid_side, 1.0, 1 / grid_side, device=device)
    row_frac = torch.arange(0, 1 - 1e-6, 1 / rows, device=device)
    col_frac = torch.arange(0, 1 - 1e-6, 1 / cols, device=device)
    row_bucket = torch.bucketize(row_frac, boundaries, right=True)
    col_bucket = torch.bucketize(col_frac, boundaries, right=True)
    return (row_bucket[:, None] * grid_side + col_bucket[None, :]).flatten()


class NavitSiglipEmbeddings(nn.Module):
    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.grid_side = config.image_size // config.patch_size
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.position_embedding = nn.Embedding(self.grid_side**2, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor, tgt_sizes: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, 3, 14, P*14] normalised strips, tgt_sizes [N, 2] -> patch embeddings [N, P, hidden]."""
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.to(dtype=weight.dtype))
        embeddings = patches.flatten(2).transpose(1, 2)
        num_slices, max_patches = embeddings.shape[:2]
        position_ids = torch.zeros(num_slices, max_patches, dtype=torch.long, device=weight.device)
        for n, (rows, cols) in enumerate(tgt_sizes.tolist()):
            position_ids[n, : rows * cols] = bucketed_position_ids(rows, cols, self.grid_side, weight.device)
        return embeddings + self.position_embedding(position_ids)


class NavitSiglipVisionTransformer(nn.Module):
    """The released `vision.vpm`: embeddings, 27 SigLIP encoder layers, post layer norm; no pooling head."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = NavitSiglipEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, pixel_values: torch.Tensor, tgt_sizes: torch.Tensor, patch_attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Normalised strips [N, 3, 14, P*14] -> patch features [N, P, hidden]; padded patches are masked out."""
        hidden = self.embeddings(pixel_values, tgt_sizes)
        mask = bidirectional_attention_mask(self.config, hidden, patch_attention_mask.reshape(hidden.shape[0], -1))
        hidden = self.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state
        return self.post_layernorm(hidden)
