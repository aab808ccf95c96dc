"""segment_anything's image-encoder attention computed by ``F.scaled_dot_product_attention`` (SDPA).

SAM's ``Attention`` builds the full (H*W) x (H*W) score matrix per head and adds its decomposed
relative-position terms to it: in the global-attention blocks at 1024 px that is 4096 x 4096 per head,
held two to three times during the forward pass and once more for the backward pass.

The additive bias is  bias[(i, j), (k, l)] = rel_h[(i, j), k] + rel_w[(i, j), l]  (query at row i,
column j; key at row k, column l), with rel_h / rel_w from SAM's own ``get_rel_pos``. A sum of two such
terms is a dot product: append rel_h and rel_w to each query and one-hot codes of the key's row and
column to each key, and q' . k' = scale * q . k + bias. SDPA then runs a fused kernel (flash on CPU and
CUDA) that never stores a score matrix, with gradients for everything, the relative-position tables
included. Passing the bias as ``attn_mask`` instead would store it (the same N x N size), and neither
CPU kernel of torch accepts a mask that needs a gradient (it falls back to the explicit computation).
Flash kernels need one head dimension for q, k and v, so v is zero-padded and the padding sliced off.
"""

from typing import Tuple

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn

#: Values of the segmenters' ``attention`` option: "sdpa" (this module) or "sam" (segment_anything's own).
ATTENTION_CHOICES = ("sdpa", "sam")


def _one_hot_positions(size: Tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """(H*W) x (H + W): for key k at row r, column c (k = r * W + c), a 1 at r and a 1 at H + c."""
    height, width = size
    rows = torch.eye(height, dtype=like.dtype, device=like.device).repeat_interleave(width, dim=0)
    cols = torch.eye(width, dtype=like.dtype, device=like.device).repeat(height, 1)
    return torch.cat([rows, cols], dim=-1)


class SDPAttention(nn.Module):
    """The same attention as a given segment_anything ``Attention``, computed with SDPA.

    It takes over the module's own parameters under their original names (qkv, proj, rel_pos_h,
    rel_pos_w), so state-dict keys are unchanged and official checkpoints load as before.
    Input and output: B x H x W x dim token grids, as for ``Attention``.
    """

    def __init__(self, attention: Attention) -> None:
        super().__init__()
        self.num_heads, self.scale = attention.num_heads, attention.scale
        self.qkv, self.proj = attention.qkv, attention.proj
        self.use_rel_pos = attention.use_rel_pos
        if self.use_rel_pos:
            self.rel_pos_h, self.rel_pos_w = attention.rel_pos_h, attention.rel_pos_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        # B x nHead x H*W x C each, the layout SDPA expects (SAM folds heads into the batch instead)
        q, k, v = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        head_dim = q.shape[-1]
        if self.use_rel_pos:
            q, k, v = self._fold_rel_pos(q, k, v, (height, width))
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0)[..., :head_dim]
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = out.permute(0, 2, 1, 3).reshape(batch, height, width, -1)
        return self.proj(out)

    def _fold_rel_pos(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: Tuple[int, int]
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries [scale * q, rel_h, rel_w], keys [k, one-hot row, one-hot column], values [v, 0]."""
        height, width = size
        batch, heads, tokens, dim = q.shape
        rel_h_table = get_rel_pos(height, height, self.rel_pos_h)  # H x H x C, as in add_decomposed_rel_pos
        rel_w_table = get_rel_pos(width, width, self.rel_pos_w)
        grid_q = q.reshape(batch, heads, height, width, dim)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, rel_h_table).reshape(batch, heads, tokens, height)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, rel_w_table).reshape(batch, heads, tokens, width)
        q = torch.cat([q * self.scale, rel_h.to(q.dtype), rel_w.to(q.dtype)], dim=-1)
        positions = _one_hot_positions(size, k).expand(batch, heads, tokens, height + width)
        k = torch.cat([k, positions], dim=-1)
        v = F.pad(v, (0, height + width))
        return q, k, v


def use_sdpa_attention(encoder: nn.Module) -> None:
    """Replace the ``attn`` of every block of a segment_anything ``ImageEncoderViT`` by ``SDPAttention``."""
    for block in encoder.blocks:
        block.attn = SDPAttention(block.attn)
