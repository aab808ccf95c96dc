"""Compact model deltas for the wire: int8 quantization with an optional top-k mask, error feedback, and
the tensor selection of FedSCA-style partial upload. Pure numpy; the NVFlare filters that use it are in
``fedfms.runtime.compression``.

A delta ``{name: array}`` is encoded tensor by tensor into a flat ``{key: array}`` payload:

* ``NAME``: int8 values. Dense: the tensor's shape. Top-k: the kept entries, 1-D, in row-major order.
* ``NAME:scale``: float32 dequantization scale, shape ``(C,)`` (one per output channel = first dimension,
  tensors of 2 or more dimensions with ``scale="channel"``) or ``()`` (per tensor: 0/1-D tensors, or
  ``scale="tensor"``). value = int8 x scale; scale = max |value| / 127 of the channel (tensor).
* ``NAME:mask``: top-k only: uint8, ``np.packbits`` of the row-major boolean mask of kept entries,
  ``ceil(numel / 8)`` bytes.
* Non-floating tensors (e.g. BatchNorm's int64 counters) are sent as their exact delta under ``NAME`` in
  their own dtype, nothing else.

The layout (tensor shapes, dtypes, scale mode, kept fraction) travels beside it (``Codec.layout``) in the
message meta. Quantization error: at most scale / 2 per entry (round to nearest), i.e. max|x| / 254 of
its channel; top-k drops the rest of the tensor. ``compress_with_feedback`` keeps what was not sent (the
error) and adds it to the next update, so nothing is lost over rounds, only delayed.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Collection, Dict, List, Mapping, Optional, Tuple

import numpy as np

Arrays = Mapping[str, np.ndarray]
#: Key suffixes of a tensor's scale and top-k mask in a payload (state-dict names never contain ":").
SCALE, MASK = ":scale", ":mask"
#: Scale granularities: one scale per output channel (first dimension) or one per tensor.
SCALE_MODES = ("channel", "tensor")
_QMAX = 127
_BLOCK = re.compile(r"^image_encoder\.blocks\.(\d+)\.")


class CodecError(ValueError):
    """A payload that does not decode: missing or misshapen entries, wrong dtypes; names the tensor."""


def _is_float(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating)


def quantize(x: np.ndarray, per_channel: bool) -> Tuple[np.ndarray, np.ndarray]:
    """int8 values and float32 scale(s) of ``x``: symmetric, round to nearest, scale = max|x| / 127 per
    output channel (``per_channel`` and x.ndim >= 2: shape (C,)) or per tensor (shape ()). A non-finite
    input gives a non-finite scale, so it stays non-finite after ``dequantize`` (the server rejects it)."""
    x = np.asarray(x, np.float32)
    rows = x.reshape(x.shape[0], -1) if per_channel and x.ndim >= 2 else x.reshape(1, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = (np.abs(rows).max(axis=1) / _QMAX if rows.size else np.zeros(len(rows))).astype(np.float32)
        q = np.where(scale[:, None] > 0, np.rint(rows / np.where(scale > 0, scale, 1)[:, None]), 0)
        q = np.clip(np.nan_to_num(q), -_QMAX, _QMAX).astype(np.int8).reshape(x.shape)
    return q, (scale if per_channel and x.ndim >= 2 else scale.reshape(()))


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 values of int8 ``q`` with the scale(s) ``quantize`` returned."""
    scale = np.asarray(scale, np.float32)
    shape = scale.shape + (1,) * (q.ndim - scale.ndim)  # () per tensor, (C, 1, ...) per channel
    with np.errstate(invalid="ignore"):
        return q.astype(np.float32) * scale.reshape(shape)


def _top_k_mask(x: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the ceil(fraction x numel) entries of largest magnitude (at least one)."""
    flat = np.abs(np.asarray(x, np.float32)).ravel()
    k = min(flat.size, max(1, math.ceil(fraction * flat.size)))
    mask = np.zeros(flat.size, bool)
    mask[np.argpartition(flat, flat.size - k)[flat.size - k:]] = True
    return mask.reshape(x.shape)


@dataclass(frozen=True)
class Codec:
    """How deltas are encoded: ``scale`` granularity ("channel" or "tensor") and ``fraction``, the share of
    each tensor's entries kept by magnitude (top-k), 0 = all (dense int8)."""

    scale: str = "channel"
    fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.scale not in SCALE_MODES:
            raise ValueError(f"unknown scale mode {self.scale!r}; expected one of {SCALE_MODES}")
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"top-k fraction must be in [0, 1) (0 = dense), got {self.fraction}")

    def describe(self) -> str:
        return f"int8 per {self.scale}" + (f", top-{self.fraction:g}" if self.fraction else "")

    def encode(self, delta: Arrays, skip_zero: bool = False) -> Tuple[Dict[str, np.ndarray], dict]:
        """(payload, layout) of ``delta``; ``skip_zero`` leaves out tensors whose delta is all zero (the
        receiver keeps its values)."""
        data: Dict[str, np.ndarray] = {}
        shapes, dtypes = {}, {}
        for name in sorted(delta):
            x = np.asarray(delta[name])
            if skip_zero and not np.any(x):
                continue
            shapes[name], dtypes[name] = list(x.shape), str(x.dtype)
            if not _is_float(x):
                data[name] = x
                continue
            per_channel = self.scale == "channel"
            if self.fraction:
                mask = _top_k_mask(x, self.fraction)
                q, data[name + SCALE] = quantize(np.where(mask, x, 0), per_channel)
                data[name], data[name + MASK] = q[mask], np.packbits(mask.ravel())
            else:
                data[name], data[name + SCALE] = quantize(x, per_channel)
        return data, {"scale": self.scale, "fraction": self.fraction, "shapes": shapes, "dtypes": dtypes}


def decode(data: Arrays, layout: Mapping) -> Dict[str, np.ndarray]:
    """The delta a payload encodes, ``{name: array}`` in each tensor's dtype (``layout`` from ``encode``).
    Raises CodecError naming the tensor when an entry is missing, misshapen or of another dtype."""
    try:
        shapes, dtypes = layout["shapes"], layout["dtypes"]
    except (KeyError, TypeError):
        raise CodecError("payload layout lacks 'shapes' / 'dtypes'") from None
    expected = set()
    out = {}
    for name, shape in shapes.items():
        shape, dtype = tuple(shape), np.dtype(dtypes[name])
        value = data.get(name)
        if value is None:
            raise CodecError(f"payload lacks tensor {name}")
        value = np.asarray(value)
        expected.add(name)
        if not np.issubdtype(dtype, np.floating):
            if value.shape != shape or value.dtype != dtype:
                raise CodecError(f"{name}: expected {dtype} {shape}, got {value.dtype} {value.shape}")
            out[name] = value
            continue
        scale = data.get(name + SCALE)
        if scale is None:
            raise CodecError(f"payload lacks {name}{SCALE}")
        expected.add(name + SCALE)
        scale = np.asarray(scale)
        if value.dtype != np.int8 or scale.shape not in ((), shape[:1]) or (scale.shape and len(shape) < 2):
            raise CodecError(f"{name}: expected int8 values and a scale of shape () or {shape[:1]}, "
                             f"got {value.dtype} values and scale shape {scale.shape}")
        if (name + MASK) in data:
            expected.add(name + MASK)
            numel = math.prod(shape)
            bits = np.asarray(data[name + MASK])
            if bits.dtype != np.uint8 or bits.shape != ((numel + 7) // 8,):
                raise CodecError(f"{name}{MASK}: expected uint8 of shape ({(numel + 7) // 8},), got {bits.dtype} {bits.shape}")
            mask = np.unpackbits(bits, count=numel).astype(bool)
            if value.shape != (int(mask.sum()),):
                raise CodecError(f"{name}: {int(mask.sum())} entries marked in its mask, {value.size} values sent")
            dense = np.zeros(numel, np.int8)
            dense[mask] = value
            value = dense.reshape(shape)
        elif value.shape != shape:
            raise CodecError(f"{name}: expected int8 values of shape {shape}, got {value.shape}")
        out[name] = dequantize(value, scale).astype(dtype, copy=False)
    unexpected = set(data) - expected
    if unexpected:
        raise CodecError(f"payload holds entries its layout does not describe: {sorted(unexpected)[:5]}")
    return out


def compress_with_feedback(update: Arrays, residual: Arrays, codec: Codec
                           ) -> Tuple[Dict[str, np.ndarray], dict, Dict[str, np.ndarray]]:
    """Error feedback: encode ``update + residual`` and return (payload, layout, new residual), the new
    residual being what the payload does not carry (update + residual - decoded). Non-finite results reset
    the residual of that tensor to zero (the non-finite update itself is sent: the server rejects it)."""
    total = {name: np.asarray(update[name]) + residual[name] if name in residual else np.asarray(update[name])
             for name in update}
    data, layout = codec.encode(total)
    sent = decode(data, layout)
    new_residual = {}
    for name, value in total.items():
        if _is_float(value):
            error = (value - sent[name]).astype(value.dtype, copy=False)
            new_residual[name] = error if np.isfinite(error).all() else np.zeros_like(error)
    return data, layout, new_residual


def fingerprint(weights: Arrays) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``weights``: two participants hold the same
    reference model exactly when their fingerprints agree."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        value = np.ascontiguousarray(weights[name])
        digest.update(f"{name}:{value.dtype}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def upload_names(names: Collection[str], blocks: Optional[int]) -> List[str]:
    """FedSCA-style partial upload (our interpretation): of the transmitted ``names``, those a site sends
    when only the first ``blocks`` image-encoder blocks (the low-level ones) may leave it, i.e. every name
    except ``image_encoder.blocks.<i>.*`` with i >= blocks (for FedMSA: the adapters of the later blocks;
    decoder and head are always sent). ``blocks`` None: all names."""
    if blocks is None:
        return sorted(names)
    if blocks < 0:
        raise ValueError(f"partial upload blocks must be >= 0, got {blocks}")
    return sorted(n for n in names if not ((m := _BLOCK.match(n)) and int(m.group(1)) >= blocks))
