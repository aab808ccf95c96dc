"""A bundle's train.json as the one source of the network definition and defaults for its other configs.

``configs/inference.json`` runs on its own (``monai.bundle run --config_file .../inference.json``), yet
the network and the defaults it needs (model_type, image_size, device, ...) are decisions of train.json.
MONAI's ``"%configs/train.json#network_def"`` macro would express that, but it opens the file relative
to the working directory, not ``bundle_root``; so the config reaches train.json through
:class:`TrainConfig` instead: ``{"_target_": "fedfms.bundle.config.TrainConfig", "bundle_root": "@bundle_root"}``
and ``"$@train_config.get('network_def', model_type=@model_type, ...)"``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser


class TrainConfig:
    """``bundle_root/configs/train.json``, parsed on demand (read once, at construction)."""

    def __init__(self, bundle_root: str | Path) -> None:
        self.path = Path(bundle_root) / "configs" / "train.json"
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} not found: --bundle_root must be the bundle's folder (e.g. bundles/msa)")
        self.config = ConfigParser.load_config_file(self.path)

    def get(self, id: str, default: Any = None, **values: Any) -> Any:
        """train.json's item ``id`` parsed (components built, expressions evaluated) after setting the
        top-level ids in ``values`` (e.g. ``model_type=@model_type``); ``default`` if train.json lacks ``id``.

        A value for an id that train.json does not have is ignored when None (the option does not apply
        to this bundle, e.g. sam_checkpoint for unet) and an error otherwise.
        """
        if id not in self.config:
            return default
        parser = ConfigParser(copy.deepcopy(self.config))
        for key, value in values.items():
            if key in self.config:
                parser[key] = value
            elif value is not None:
                raise ValueError(f"{key}={value!r}: {self.path} has no option {key!r}")
        return parser.get_parsed_content(id)
