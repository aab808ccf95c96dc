"""The demo's STAND-IN for SAM's SA-1B weights: a tiny SAM pretrained by fedfms on synthetic shapes.

FedMSA freezes SAM's encoder and trains adapters and the decoder on top of it, so it needs an encoder
whose features are worth adapting: the paper's -PT ablation (random weights) shows it fails without
one. SAM's own weights (SA-1B) exist only for vit_b/l/h, and the demo's CPU model is ``vit_nano`` (a
2-block encoder of width 64 under a 128-wide mask decoder). :func:`standin_checkpoint` therefore
pretrains the whole tiny SAM (encoder + mask decoder, prompt-free, as a
:class:`~fedfms.networks.SAMSegmenter`) on :mod:`fedfms.data.shapes`, a generic figure-ground task on
synthetic shapes and textures that is not the demo's prostate task (see there why that is fair), and
writes it in the official SAM checkpoint layout, so it loads exactly as ``sam_vit_b_01ec64.pth`` does.

Training uses MONAI's ``SupervisedTrainer``, one OpenMP thread and seeded generation (samples are drawn
in one loader worker, seeded by their index), so the file is deterministic for a given recipe and seed
on a given machine and software stack. It is cached: written atomically once under
``cache_dir()/standin/`` with the hash of the recipe, its model_type's architecture and
:data:`RECIPE_VERSION` in its name, and reused afterwards. The default recipe (vit_nano, 128 px, 1000
steps x 8 samples, fused Adam at 3e-4; about two minutes on two CPU cores beside the demo's random run,
one process training, one drawing samples) is the one the README's demo figures were measured with.
Shorter pretraining transferred worse (with vit_tiny, 600 steps: FedMSA from it did not beat the random
encoder; see the README's demo section).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from fedfms.core.io import save_torch_atomic
from fedfms.data.shapes import shapes_sample
from fedfms.networks import SAMSegmenter, encoder_config

log = logging.getLogger(__name__)

#: How every table, file and plot names these weights.
STANDIN_LABEL = ("STAND-IN for SAM's SA-1B weights (pretrained by fedfms on synthetic shapes, "
                 "not on medical images)")
#: Part of the cache key: bump it whenever the shapes generator or the training code changes results.
RECIPE_VERSION = 3  # 3: fused Adam
CACHE_ENV = "FEDFMS_CACHE_DIR"


@dataclass(frozen=True)
class StandInRecipe:
    """How the stand-in is pretrained: encoder ``model_type``, input side ``image_size`` (the demo's, so
    the position embedding is trained at the size it is used at), ``steps`` x ``batch_size`` fresh
    samples of the shapes task (never repeated), Adam at ``learning_rate``, ``seed`` of the samples and
    the initial weights, ``threads`` OpenMP threads (fixed: results depend on it)."""

    model_type: str = "vit_nano"
    image_size: int = 128
    steps: int = 1000
    batch_size: int = 8
    learning_rate: float = 3e-4
    seed: int = 1337
    threads: int = 1

    def key(self) -> str:
        """Short hash of the recipe, its model_type's architecture (``networks.ENCODER_CONFIGS``), the recipe
        version and the torch version (the cache file's name)."""
        text = json.dumps({**asdict(self), "architecture": asdict(encoder_config(self.model_type)),
                           "version": RECIPE_VERSION, "torch": torch.__version__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def file_name(self) -> str:
        return f"sam_{self.model_type}_standin_shapes_{self.image_size}px_seed{self.seed}_{self.key()}.pth"


def cache_dir() -> Path:
    """``$FEDFMS_CACHE_DIR``, else ``$XDG_CACHE_HOME/fedfms``, else ``~/.cache/fedfms``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fedfms"


class ShapesDataset(torch.utils.data.Dataset):
    """Samples ``0 .. length - 1`` of the shapes task as bundle-ready dicts: image (3, S, S) in [0, 1],
    label (1, S/4, S/4) by nearest-exact, as the bundles' preprocessing resizes labels."""

    def __init__(self, seed: int, length: int, image_size: int, output_scale: int = 4) -> None:
        self.seed, self.length, self.image_size, self.output_scale = seed, length, image_size, output_scale

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        image, mask = shapes_sample(self.seed, index, self.image_size)
        label = torch.nn.functional.interpolate(torch.from_numpy(mask)[None].float(),
                                                scale_factor=1 / self.output_scale, mode="nearest-exact")[0]
        return {"image": torch.from_numpy(image), "label": label}


def pretrain_standin(recipe: StandInRecipe, progress: bool = True) -> SAMSegmenter:
    """Train a prompt-free SAM (random init with ``recipe.seed``) on the shapes task; return it."""
    from ignite.handlers import ProgressBar
    from monai.engines import SupervisedTrainer
    from monai.handlers import from_engine

    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(recipe.seed)  # the initial weights; the samples are seeded by (seed, index)
            network = SAMSegmenter(model_type=recipe.model_type, image_size=recipe.image_size)
            data = torch.utils.data.DataLoader(
                ShapesDataset(recipe.seed, recipe.steps * recipe.batch_size, recipe.image_size),
                batch_size=recipe.batch_size, shuffle=False, num_workers=1)  # samples drawn beside training
            trainer = SupervisedTrainer(
                device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=network,
                optimizer=torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=recipe.learning_rate,
                                           fused=True),  # as the bundles: a quarter of the unfused optimizer's time
                loss_function=torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(2.0)))  # the bundles' loss
            if progress:
                ProgressBar(desc="pretraining the stand-in SAM on synthetic shapes").attach(
                    trainer, output_transform=from_engine(["loss"], first=True))
            trainer.run()
    finally:
        torch.set_num_threads(threads)
    return network.eval()


def standin_checkpoint(recipe: StandInRecipe = StandInRecipe(), cache: Optional[Path] = None,
                       progress: bool = True) -> Path:
    """The stand-in checkpoint for ``recipe``: reused from ``cache`` (default :func:`cache_dir`) when
    present, else pretrained and written there atomically. The file is the official SAM layout (the
    keys fedfms adds, ``SAMSegmenter.new_keys()``, left out), so ``checkpoint=`` of either segmenter
    loads it key for key."""
    path = Path(cache or cache_dir()) / "standin" / recipe.file_name()
    if path.is_file():
        log.info("stand-in SAM weights: reusing %s", path)
        return path
    log.info("stand-in SAM weights: pretraining %s on synthetic shapes (%d steps x %d samples, %d px) -> %s",
             recipe.model_type, recipe.steps, recipe.batch_size, recipe.image_size, path)
    start = time.perf_counter()
    network = pretrain_standin(recipe, progress)
    new = set(network.new_keys())
    save_torch_atomic({k: v for k, v in network.state_dict().items() if k not in new}, path)
    log.info("stand-in SAM weights: pretrained in %.0f s", time.perf_counter() - start)
    return path
