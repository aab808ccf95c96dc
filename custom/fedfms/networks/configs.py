"""Registry of SAM architectures, keyed by ``model_type``: the image encoder and the width of the
neck, prompt encoder and mask decoder.

The vit_b / vit_l / vit_h entries are the values segment_anything's ``sam_model_registry`` builders
use (a test pins that the resulting state-dict shapes match theirs). ``vit_tiny`` and ``vit_nano`` are
ours, with the same code path and no official weights, for tests and CPU demos: ``vit_tiny`` is a
narrow, shallow encoder under SAM's own mask decoder; ``vit_nano`` is the same encoder under a mask
decoder half as wide (128) with MLPs of 4x its width (SAM's: 256, 2048), where a prompt-free training
step on a CPU costs about half of vit_tiny's (the decoder's 256-wide layers dominate at this scale).
"""

from dataclasses import dataclass
from typing import Dict, Tuple

#: SAM's pretraining resolution; encoders are always built at this size so official checkpoints load
#: shape for shape, and other input sizes interpolate the absolute position embedding at run time.
SAM_IMAGE_SIZE = 1024
PATCH_SIZE = 16
#: The paper's encoder (ViT-B), the default wherever a model_type is not given.
DEFAULT_MODEL_TYPE = "vit_b"
#: SAM's width of the neck, prompt encoder and mask decoder, and of the decoder transformer's MLPs.
PROMPT_EMBED_DIM = 256
DECODER_MLP_DIM = 2048


@dataclass(frozen=True)
class EncoderConfig:
    """One SAM architecture: the ViT encoder (``embed_dim``, ``depth``, ``num_heads``,
    ``global_attn_indexes``, ``window_size``), ``prompt_embed_dim`` (neck output, prompt encoder, mask
    decoder and IoU head width) and ``decoder_mlp_dim`` (the decoder transformer's MLPs), and the file
    name of the official checkpoint, if any."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: Tuple[int, ...]
    window_size: int = 14
    official_checkpoint: str = ""
    prompt_embed_dim: int = PROMPT_EMBED_DIM
    decoder_mlp_dim: int = DECODER_MLP_DIM


ENCODER_CONFIGS: Dict[str, EncoderConfig] = {
    "vit_b": EncoderConfig(768, 12, 12, (2, 5, 8, 11), official_checkpoint="sam_vit_b_01ec64.pth"),
    "vit_l": EncoderConfig(1024, 24, 16, (5, 11, 17, 23), official_checkpoint="sam_vit_l_0b3195.pth"),
    "vit_h": EncoderConfig(1280, 32, 16, (7, 15, 23, 31), official_checkpoint="sam_vit_h_4b8939.pth"),
    # A window of 4 tiles 64 px and 128 px inputs (4x4 and 8x8 patch grids) without padding.
    "vit_tiny": EncoderConfig(64, 2, 2, (1,), window_size=4),
    # The demo's CPU model: vit_tiny's encoder, a decoder half as wide.
    "vit_nano": EncoderConfig(64, 2, 2, (1,), window_size=4, prompt_embed_dim=128, decoder_mlp_dim=512),
}


def encoder_config(model_type: str) -> EncoderConfig:
    """Return the registered configuration for ``model_type`` or raise a ValueError listing the choices."""
    try:
        return ENCODER_CONFIGS[model_type]
    except KeyError:
        raise ValueError(
            f"unknown model_type {model_type!r}; expected one of {sorted(ENCODER_CONFIGS)}"
        ) from None
