"""The bundles' typed options, checked when a bundle starts, and one-line errors on the command line.

Each bundle's ``initialize`` step calls :func:`check_options` with its options (``"$fedfms.bundle.options.
check_options(image_size=@image_size, ...)"``), so ``--activation_checkpointing maybe`` or
``--batch_size four`` stops before any model is built or data read. The components convert the values
themselves too (``fedfms.core.options``): ``--activation_checkpointing false`` reaches the network as the
string 'false' and is read as False.

``python -m monai.bundle`` prints a 70-90 line traceback ending in "Failed to instantiate" for any error
raised while it builds a component. When a bundle runs from that command line, :func:`check_options`
also installs a hook that prints an error raised by fedfms code (a bad option, checkpoint, datalist or
input file) as one line, ``error: <message>``; ``FEDFMS_TRACEBACK=1`` shows the full traceback instead.
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Callable, Dict, Optional, Sequence

from fedfms.core.options import as_bool, as_choice, as_float, as_int
from fedfms.networks.attention import ATTENTION_CHOICES

from .precision import parse_amp, parse_amp_dtype

#: option id -> converter, for every typed option of the bundles (train, evaluate, inference)
BUNDLE_OPTIONS: Dict[str, Callable[[str, object], object]] = {
    "activation_checkpointing": as_bool,
    "amp": parse_amp,
    "amp_dtype": parse_amp_dtype,
    "attention": partial(as_choice, choices=ATTENTION_CHOICES),
    "write_overlays": as_bool,
    "dicom_seg": as_bool,
    "stop_on_error": as_bool,
    "use_mirroring": as_bool,
    "image_size": partial(as_int, minimum=1),
    "output_scale": partial(as_int, minimum=1),
    "num_classes": partial(as_int, minimum=1),
    "max_epochs": partial(as_int, minimum=1),
    "batch_size": partial(as_int, minimum=1),
    "num_workers": partial(as_int, minimum=0),
    "cache_rate": partial(as_float, minimum=0, maximum=1),
    "val_interval": partial(as_int, minimum=1),
    "num_overlays": partial(as_int, minimum=0),
    "learning_rate": partial(as_float, above=0),
    "lr_schedule_epochs": partial(as_int, minimum=1),
    "iterations_per_epoch": partial(as_int, minimum=1),
    "gpu_memory_target_gb": partial(as_float, above=0),
}
_PACKAGE = str(Path(__file__).resolve().parents[1])


def check_options(nullable: Sequence[str] = (), **values: object) -> None:
    """Check each bundle option given as ``id=value`` (OptionError naming the first bad one); the options
    named in ``nullable`` may also be None (the bundle's "not set", e.g. nnU-Net's batch size: the plan's).
    On the ``python -m monai.bundle`` command line, fedfms errors are then printed as one line."""
    if _on_bundle_command_line():
        sys.excepthook = one_line_errors
    for name, value in values.items():
        if name not in BUNDLE_OPTIONS:
            raise KeyError(f"{name!r} is not a typed bundle option; known: {sorted(BUNDLE_OPTIONS)}")
        if value is not None or name not in nullable:
            BUNDLE_OPTIONS[name](name, value)


def _on_bundle_command_line() -> bool:
    return Path(sys.argv[0]).parts[-3:] == ("monai", "bundle", "__main__.py")


def _raised_by_fedfms(error: BaseException) -> bool:
    """True when the innermost frame of ``error``'s traceback is fedfms code."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE)


def fedfms_cause(error: BaseException) -> Optional[BaseException]:
    """The first exception in ``error``'s chain (itself, its cause, its context...) raised by fedfms code."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if _raised_by_fedfms(error):
            return error
        error = error.__cause__ or error.__context__
    return None


def one_line_errors(kind: type[BaseException], error: BaseException, tb: Optional[TracebackType]) -> None:
    """``sys.excepthook``: an uncaught error raised by fedfms code is printed as ``error: <message>``;
    anything else (or with FEDFMS_TRACEBACK=1) as Python prints it."""
    cause = fedfms_cause(error)
    if cause is None or os.environ.get("FEDFMS_TRACEBACK") == "1":
        sys.__excepthook__(kind, error, tb)
        return
    message = " ".join(str(cause).split()) or type(cause).__name__
    print(f"error: {message} (FEDFMS_TRACEBACK=1 shows the traceback)", file=sys.stderr)
