"""Medical SAM Adapter (MSA) pieces: the bottleneck adapter and a ViT block that runs two of them.

Placement follows the Medical SAM Adapter reference code: a Space adapter (with skip) on the attention
output inside the window partition, and an MLP adapter (without skip) in parallel to the block's MLP,
scaled by 0.5. The reference's Depth adapter only runs on 3D input and is left out.
"""

import torch
from segment_anything.modeling.image_encoder import Block, window_partition, window_unpartition
from torch import nn


class Adapter(nn.Module):
    """Linear(D, D * ratio) -> GELU -> Linear(D * ratio, D); with ``skip`` the input is added back.

    Input and output: ... x D tensors.
    """

    def __init__(self, dim: int, ratio: float = 0.25, skip: bool = True) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.act(self.fc1(x)))
        return x + y if self.skip else y


class AdaptedBlock(nn.Module):
    """A segment_anything ViT ``Block`` with MSA's Space and MLP adapters.

    It takes over the block's own submodules under their original names (norm1, attn, norm2, mlp),
    so official checkpoint keys stay valid; the adapters add ``space_adapter.*`` and ``mlp_adapter.*``.
    Input and output: B x H x W x D token grids, as for ``Block``.
    """

    def __init__(self, block: Block, mlp_adapter_scale: float = 0.5) -> None:
        super().__init__()
        dim = block.norm1.normalized_shape[0]
        self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp
        self.window_size = block.window_size
        self.space_adapter = Adapter(dim, skip=True)
        self.mlp_adapter = Adapter(dim, skip=False)
        self.mlp_adapter_scale = mlp_adapter_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            height, width = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
        x = self.space_adapter(self.attn(x))
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (height, width))
        x = shortcut + x
        normed = self.norm2(x)
        return x + self.mlp(normed) + self.mlp_adapter_scale * self.mlp_adapter(normed)
