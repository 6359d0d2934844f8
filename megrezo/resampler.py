"""The vision connector: one cross-attention layer that turns each slice's patch features into 64 LLM vectors.

Queries are learned; keys carry a fixed 2-D sin/cos position code of each patch's (row, col) so the 64 queries
can tell where in the slice a patch lies; values carry none.
"""

import torch
from torch import nn


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[..., dim] code of integer positions: sines then cosines over dim/2 geometric frequencies (base 10000)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2))
    angles = positions.to(torch.float64)[..., None] * omega
    return torch.cat([angles.sin(), angles.cos()], dim=-1).float()


def sincos_2d(dim: int, rows: int, cols: int, device: torch.device | None = None) -> torch.Tensor:
    """[rows, cols, dim] fp32 table: the first half of the width encodes the column, the second half the row.

    The table is a pure function of (row, col), so computing just the size a batch needs gives the same values as
    slicing a 70x70 table that grows on demand.
    """
    row_ids = torch.arange(rows, device=device)[:, None].expand(rows, cols)
    col_ids = torch.arange(cols, device=device)[None, :].expand(rows, cols)
    return torch.cat([sincos_1d(dim // 2, col_ids), sincos_1d(dim // 2, row_ids)], dim=-1)


class Resampler(nn.Module):
    """The released `vision.resampler`: `query`, `kv_proj`, `attn`, `ln_q`, `ln_kv`, `ln_post`, `proj`."""

    def __init__(self, num_queries: int, embed_dim: int, num_heads: int, kv_dim: int, eps: float = 1e-6):
        super().__init__()
        self.embed_dim = embed_dim
        self.query = nn.Parameter(torch.zeros(num_queries, embed_dim))
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads)
        self.ln_q = nn.LayerNorm(embed_dim, eps=eps)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=eps)
        self.ln_post = nn.LayerNorm(embed_dim, eps=eps)
        self.proj = nn.Parameter(torch.zeros(embed_dim, embed_dim))

    def key_positions(self, tgt_sizes: torch.Tensor, max_patches: int, device: torch.device) -> torch.Tensor:
        """[N, P, embed_dim] fp32 position codes of each slice's patches in strip order, zero on padding."""
        rows, cols = tgt_sizes[:, :1].to(device), tgt_sizes[:, 1:].to(device)
        table = sincos_2d(self.embed_dim, int(rows.max()), int(cols.max()), device)
        index = torch.arange(max_patches, device=device)[None, :]
        real = index < rows * cols
        patch_rows = torch.where(real, index // cols, 0)
        patch_cols = torch.where(real, index % cols, 0)
        return table[patch_rows, patch_cols] * real[..., None]

    def forward(self, features: torch.Tensor, tgt_sizes: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        """features [N, P, kv_dim], tgt_sizes [N, 2], patch_mask [N, P] (True = real) -> [N, num_queries, embed_dim]."""
        kv = self.ln_kv(self.kv_proj(features))
        keys = kv + self.key_positions(tgt_sizes, kv.shape[1], kv.device).to(kv.dtype)
        # MultiheadAttention takes [P, N, E] and projects each input with a linear layer. Given a transposed or
        # expanded view and weights that do not require grad (inference, a frozen encoder), torch's matmul cannot
        # fold it into one matrix product and copies the weight once per position instead (13.6 GB and 25x the
        # time at full size); contiguous inputs cost one small copy each.
        queries = self.ln_q(self.query)[:, None, :].expand(-1, kv.shape[0], -1).contiguous()
        out, _ = self.attn(
            queries,
            keys.transpose(0, 1).contiguous(),
            kv.transpose(0, 1).contiguous(),
            key_padding_mask=~patch_mask,
            need_weights=False,
        )
        return self.ln_post(out.transpose(0, 1)) @ self.proj
