"""Prompt-free SAM segmenters: FedSAM's ``SAMSegmenter`` and FedMSA's ``MSASegmenter``.

Both are built from segment_anything's own modules under ``Sam``'s attribute names (image_encoder,
prompt_encoder, mask_decoder), so official checkpoints load key for key. Decoding is prompt-free as in
FedFMS: the mask decoder sees only its output tokens (IoU token + 4 mask tokens), no dense "no mask"
embedding is added, and the prompt encoder contributes only its image positional encoding.
"""

from functools import partial
from pathlib import Path
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from fedfms.core.options import OptionError, as_bool, as_choice, as_int

from .adapters import AdaptedBlock
from .attention import ATTENTION_CHOICES, use_sdpa_attention
from .checkpoint import load_sam_checkpoint
from .configs import DEFAULT_MODEL_TYPE, PATCH_SIZE, SAM_IMAGE_SIZE, encoder_config

NUM_MASK_TOKENS = 4  # SAM's single-mask token + 3 multimask tokens


def resize_pos_embed(pos_embed: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """Bicubically resize a 1 x H x W x D absolute position embedding to 1 x grid[0] x grid[1] x D."""
    if tuple(pos_embed.shape[1:3]) == tuple(grid):
        return pos_embed
    resized = F.interpolate(pos_embed.permute(0, 3, 1, 2), size=grid, mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1)


class PromptFreeSegmenter(nn.Module):
    """SAM without prompts: B x 3 x S x S images in [0, 1] -> B x num_classes x S/4 x S/4 logits.

    Args:
        model_type: "vit_b" | "vit_l" | "vit_h" | "vit_tiny" | "vit_nano" (see ``configs.ENCODER_CONFIGS``).
        num_classes: 1 for a binary task (mask token 0); C > 1 adds a 1x1 conv over the 4 mask outputs.
        image_size: input side S, a multiple of 16; the position embedding is interpolated when S != 1024.
        checkpoint: path to an official SAM checkpoint of the same model_type, or None for random init.
        activation_checkpointing: recompute encoder blocks in the backward pass to save memory.
        attention: "sdpa" computes the encoder's attention with ``F.scaled_dot_product_attention``
            (``attention.SDPAttention``: no score matrix is stored, same result); "sam" keeps
            segment_anything's own ``Attention``.

    Subclasses decide which parameters train (``is_trainable``); everything else is frozen.
    """

    def __init__(
        self,
        model_type: str = DEFAULT_MODEL_TYPE,
        num_classes: int = 1,
        image_size: int = SAM_IMAGE_SIZE,
        checkpoint: Optional[Union[str, Path]] = None,
        activation_checkpointing: bool = False,
        attention: str = "sdpa",
    ) -> None:
        super().__init__()
        config = encoder_config(model_type)
        num_classes = as_int("num_classes", num_classes, minimum=1)
        image_size = as_int("image_size", image_size, minimum=PATCH_SIZE)
        if image_size % PATCH_SIZE:
            raise OptionError(f"option image_size={image_size!r}: expected a positive multiple of {PATCH_SIZE}")
        activation_checkpointing = as_bool("activation_checkpointing", activation_checkpointing)
        attention = as_choice("attention", attention, ATTENTION_CHOICES)
        self.model_type, self.num_classes, self.image_size = model_type, num_classes, image_size
        self.activation_checkpointing, self.attention = activation_checkpointing, attention

        self.image_encoder = ImageEncoderViT(
            img_size=SAM_IMAGE_SIZE,
            patch_size=PATCH_SIZE,
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_ratio=4,
            out_chans=config.prompt_embed_dim,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=config.window_size,
            global_attn_indexes=config.global_attn_indexes,
        )
        if attention == "sdpa":
            use_sdpa_attention(self.image_encoder)
        grid = SAM_IMAGE_SIZE // PATCH_SIZE
        self.prompt_encoder = PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(SAM_IMAGE_SIZE, SAM_IMAGE_SIZE),
            mask_in_chans=16,
        )
        self.mask_decoder = MaskDecoder(
            num_multimask_outputs=NUM_MASK_TOKENS - 1,
            transformer=TwoWayTransformer(depth=2, embedding_dim=config.prompt_embed_dim,
                                          mlp_dim=config.decoder_mlp_dim, num_heads=8),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=config.prompt_embed_dim,
        )
        self.class_head: Optional[nn.Conv2d] = (
            nn.Conv2d(NUM_MASK_TOKENS, num_classes, kernel_size=1) if num_classes > 1 else None
        )
        self.adapt_encoder()
        if checkpoint is not None:
            load_sam_checkpoint(self, checkpoint, model_type, new_keys=self.new_keys())
        for name, param in self.named_parameters():
            param.requires_grad_(self.is_trainable(name))

    # -- what trains and what is sent -------------------------------------------------------------
    def adapt_encoder(self) -> None:
        """Hook for subclasses that modify the encoder after construction (MSA inserts adapters)."""

    def new_keys(self) -> List[str]:
        """State-dict keys that official SAM checkpoints do not contain."""
        return [k for k in self.state_dict() if k.startswith("class_head.")]

    def receives_gradient(self, name: str) -> bool:
        """False for parameters prompt-free decoding never uses in the loss: the prompt encoder (only
        its positional-encoding buffer is used), the IoU head, and, for a binary task, the
        hypernetworks of mask tokens 1-3 whose masks are discarded."""
        if name.startswith(("prompt_encoder.", "mask_decoder.iou_prediction_head.")):
            return False
        if self.num_classes == 1 and name.startswith("mask_decoder.output_hypernetworks_mlps."):
            return name.split(".")[2] == "0"
        return True

    def is_trainable(self, name: str) -> bool:
        raise NotImplementedError

    def transmitted_keys(self) -> List[str]:
        """Names of the tensors a site trains and sends each round (its transmitted state)."""
        return [name for name, _ in self.named_parameters() if self.is_trainable(name)]

    # -- forward ----------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S -> B x D x S/16 x S/16 image embedding, D the config's prompt_embed_dim (SAM's 256):
        ImageEncoderViT's forward with the absolute position embedding resized to the patch grid, and
        optional activation checkpointing."""
        encoder = self.image_encoder
        x = encoder.patch_embed(images)
        x = x + resize_pos_embed(encoder.pos_embed, tuple(x.shape[1:3]))
        for block in encoder.blocks:
            if self.activation_checkpointing and torch.is_grad_enabled():
                x = activation_checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return encoder.neck(x.permute(0, 3, 1, 2))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        expected = (3, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"input images must be B x {' x '.join(map(str, expected))}, got {tuple(images.shape)}")
        embeddings = self.encode(images)
        image_pe = self.prompt_encoder.pe_layer(tuple(embeddings.shape[-2:])).unsqueeze(0)
        no_prompts = embeddings.new_zeros((1, 0, embeddings.shape[1]))
        no_dense = embeddings.new_zeros(())
        # One empty prompt set shared by the whole batch: SAM's decoder repeats each image once per
        # prompt set (here once), and its attention broadcasts the single token set over the B images.
        masks, _ = self.mask_decoder.predict_masks(embeddings, image_pe, no_prompts, no_dense)
        return masks[:, :1] if self.class_head is None else self.class_head(masks)


class SAMSegmenter(PromptFreeSegmenter):
    """FedSAM's model: every SAM weight that prompt-free decoding uses is trained and exchanged."""

    def is_trainable(self, name: str) -> bool:
        return self.receives_gradient(name)


class MSASegmenter(PromptFreeSegmenter):
    """FedMSA's model: the SAM encoder is frozen; MSA adapters in every ViT block, the mask decoder and
    the class head are trained and are the only tensors exchanged."""

    def adapt_encoder(self) -> None:
        blocks = self.image_encoder.blocks
        for index, block in enumerate(blocks):
            blocks[index] = AdaptedBlock(block)

    def new_keys(self) -> List[str]:
        return super().new_keys() + [k for k in self.state_dict() if self._is_adapter(k)]

    @staticmethod
    def _is_adapter(name: str) -> bool:
        return ".space_adapter." in name or ".mlp_adapter." in name

    def is_trainable(self, name: str) -> bool:
        in_scope = self._is_adapter(name) or name.startswith(("mask_decoder.", "class_head."))
        return in_scope and self.receives_gradient(name)
