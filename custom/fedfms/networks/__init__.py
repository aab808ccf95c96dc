"""Networks: prompt-free SAM (FedSAM) and SAM with Medical SAM Adapters (FedMSA), built from
segment_anything's modules, plus the function that decides what a site transmits."""

from .adapters import Adapter, AdaptedBlock
from .checkpoint import CheckpointError, load_partial_state, load_sam_checkpoint, read_state_dict
from .configs import DEFAULT_MODEL_TYPE, ENCODER_CONFIGS, EncoderConfig, encoder_config
from .random_weights import write_random_sam_checkpoint
from .segmenter import MSASegmenter, PromptFreeSegmenter, SAMSegmenter, resize_pos_embed
from .transmission import transmitted_keys, transmitted_state

__all__ = [
    "DEFAULT_MODEL_TYPE",
    "ENCODER_CONFIGS",
    "Adapter",
    "AdaptedBlock",
    "CheckpointError",
    "EncoderConfig",
    "MSASegmenter",
    "PromptFreeSegmenter",
    "SAMSegmenter",
    "encoder_config",
    "load_partial_state",
    "load_sam_checkpoint",
    "read_state_dict",
    "resize_pos_embed",
    "transmitted_keys",
    "transmitted_state",
    "write_random_sam_checkpoint",
]
