from pathlib import Path

import pytest
import torch
from segment_anything import sam_model_registry


@pytest.fixture(scope="session")
def vit_b_sam(tmp_path_factory):
    """segment_anything's own ViT-B at random init (seeded) and the path of its saved state dict."""
    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]()
    path = Path(tmp_path_factory.mktemp("ckpt")) / "sam_vit_b_random.pth"
    torch.save(sam.state_dict(), path)
    return sam, path
