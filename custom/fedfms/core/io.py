"""File output and tensor input that every layer shares.

Writes are atomic: a file goes to a temporary sibling and is renamed into place (``os.replace``), a
folder is filled under a hidden staging name and swapped in, so a reader never sees half a file and a
failed or interrupted write leaves the previous version intact. Tensor files are read with
``torch.load(weights_only=True)``: no pickled code ever runs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Optional

import torch

PathLike = str | os.PathLike


@contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path`` (same suffix); on success it replaces ``path``, else it is removed."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # keep the full suffix (e.g. ".nii.gz") so writers that infer the format from the name still work
    suffix = name[name.index(".") :] if "." in name else ""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary shared files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; return the path."""
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        handle.write(text)
    return Path(path)


def write_json_atomic(path: PathLike, data: object, *, indent: int = 2, sort_keys: bool = False) -> Path:
    """Write ``data`` as JSON (``indent``, ``sort_keys``; non-JSON values as str) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(data, indent=indent, sort_keys=sort_keys, default=str) + "\n")


def save_torch_atomic(obj: object, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; return the path."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_figure_atomic(figure: Any, path: PathLike, **savefig_options: Any) -> Path:
    """``figure.savefig(path, **savefig_options)`` (a matplotlib Figure; format from the suffix) atomically."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, **savefig_options)
    return Path(path)


def copy_file_atomic(source: PathLike, target: PathLike) -> Path:
    """Copy file ``source`` to ``target`` (a file path, or a folder to copy into) atomically; return the copy."""
    target = Path(target)
    if target.is_dir():
        target = target / Path(source).name
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


def replace_directory(staging: PathLike, target: PathLike) -> None:
    """Replace folder ``target`` by ``staging`` (same parent). Two renames: if interrupted between them,
    the previous version survives complete as ``.TARGET.old-*/TARGET`` and ``target`` is simply absent."""
    staging, target = Path(staging), Path(target)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.rename(target, old / target.name)
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old)


@contextmanager
def staged_directory(target: PathLike) -> Iterator[Path]:
    """Yield an empty hidden folder ``.TARGET.tmp-*`` beside ``target``; when the block ends normally it
    replaces ``target`` (see :func:`replace_directory`), when it raises (Ctrl-C included) it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        staging.chmod(0o755)  # mkdtemp creates 0700; the published folder is an ordinary shared folder
        yield staging
        replace_directory(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


def load_tensors(path: PathLike, key: Optional[str] = None, option: str = "") -> Dict[str, torch.Tensor]:
    """The named tensors of a PyTorch file, read on the CPU without running pickled code.

    A flat ``{name: tensor}`` file, or with ``key`` the ``key`` entry of a nested one (NVFlare's
    PTFileModelPersistor writes ``{"model": ..., "train_conf": ...}``). ``option`` names the setting the
    path came from (e.g. "ckpt_path") in messages. CheckpointError naming the file, with the reason, when
    it is missing, a folder, empty, unreadable or holds anything but named tensors.
    """
    path = Path(path)
    name = f"checkpoint {path}" + (f" ({option})" if option else "")
    if path.is_dir():
        raise CheckpointError(f"{name} is a folder, expected a PyTorch checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{name} does not exist; fedfms never downloads weights, pass the path of a local copy")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{name} is empty (0 bytes): an interrupted download or copy?")
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        reason = str(err) or type(err).__name__  # e.g. EOFError has no message
        raise CheckpointError(f"{name} is not a readable PyTorch file (truncated or corrupted?): {reason}") from err
    if key is not None and isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
        state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        nested = f", flat or under {key!r}" if key else ""
        raise CheckpointError(f"{name} does not hold a state dict of named tensors{nested} (got {type(state).__name__})")
    return dict(state)
