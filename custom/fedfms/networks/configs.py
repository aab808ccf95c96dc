"""Registry of image-encoder configurations, keyed by ``model_type``.

The vit_b / vit_l / vit_h entries are the values segment_anything's ``sam_model_registry`` builders
use (a test pins that the resulting state-dict shapes match theirs). ``vit_tiny`` is ours: a narrow,
shallow encoder with the same code path, for tests and CPU demos; it has no official weights.
"""

from dataclasses import dataclass
from typing import Dict, Tuple

#: SAM's pretraining resolution; encoders are always built at this size so official checkpoints load
#: shape for shape, and other input sizes interpolate the absolute position embedding at run time.
SAM_IMAGE_SIZE = 1024
PATCH_SIZE = 16
#: The paper's encoder (ViT-B), the default wherever a model_type is not given.
DEFAULT_MODEL_TYPE = "vit_b"
PROMPT_EMBED_DIM = 256


@dataclass(frozen=True)
class EncoderConfig:
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: Tuple[int, ...]
    window_size: int = 14
    official_checkpoint: str = ""


ENCODER_CONFIGS: Dict[str, EncoderConfig] = {
    "vit_b": EncoderConfig(768, 12, 12, (2, 5, 8, 11), official_checkpoint="sam_vit_b_01ec64.pth"),
    "vit_l": EncoderConfig(1024, 24, 16, (5, 11, 17, 23), official_checkpoint="sam_vit_l_0b3195.pth"),
    "vit_h": EncoderConfig(1280, 32, 16, (7, 15, 23, 31), official_checkpoint="sam_vit_h_4b8939.pth"),
    # A window of 4 tiles 64 px and 128 px inputs (4x4 and 8x8 patch grids) without padding.
    "vit_tiny": EncoderConfig(64, 2, 2, (1,), window_size=4),
}


def encoder_config(model_type: str) -> EncoderConfig:
    """Return the registered configuration for ``model_type`` or raise a ValueError listing the choices."""
    try:
        return ENCODER_CONFIGS[model_type]
    except KeyError:
        raise ValueError(
            f"unknown model_type {model_type!r}; expected one of {sorted(ENCODER_CONFIGS)}"
        ) from None
