"""What leaves a site, decided by the site: a result policy for NVFlare privacy scopes.

A job says which tensors it sends (``selection``), but that is the job author's code. NVFlare's privacy
management lets a site decide instead: the site's ``local/privacy.json`` defines *scopes*, each with
its own ``task_result_filters``; a job names its scope in ``meta.json`` (``"scope": "fedmsa"``); a site
that defines scopes refuses to deploy a job whose scope it does not define (a job naming none gets the
file's ``default_scope``, or is refused), and applies the scope's filters to every result of the job,
whatever the job configures. This module is that filter and the
site-side pieces around it:

- :class:`ResultPolicy` (a scope's task result filter): lets out only
  * DXOs of the allowed data kinds (default WEIGHTS, WEIGHT_DIFF, METRICS; never COLLECTION, except,
    where the scope says ``nnunet_fingerprint``, one COLLECTION holding exactly an nnU-Net fingerprint
    that passes ``fedfms.nnunet.check_fingerprint``: FednnU-Net's planning step);
  * tensors (WEIGHTS / WEIGHT_DIFF) whose names match the scope's glob patterns, that are numpy arrays
    of an allowed dtype (default float32 and float16) with at most ``max_tensor_elements`` values,
    all of them together at most ``max_result_bytes``;
  * metrics (METRICS) that are numbers, or vectors of at most ``max_metric_values`` numbers (default 1:
    aggregate scalars only, so per-sample metrics cannot pass);
  * DXO meta under known keys only, and headers, with plain values: numbers, strings of at most
    ``MAX_STRING`` characters, lists of such strings, or flat dicts of at most ``MAX_ENTRIES`` numbers
    or strings (INITIAL_METRICS). No arrays, bytes or objects in meta or headers.
  ``mode="drop"`` removes what breaks the policy and sends the rest; ``mode="reject"`` withholds the
  whole result (the server receives an error reply). A disallowed data kind, a malformed result or a
  result over the size cap is always withheld. Every removed item is logged with its name and reason.
- :class:`ResultPolicyGuard` (a component of the site's privacy.json): NVFlare 2.9 runs a scope's
  result filters BEFORE the job's own result filters (``nvflare.apis.utils.task_utils.get_filters``),
  so a job filter (float16 transfer, compression, or a modified job) changes the result after the
  site's filter saw it. The guard re-applies the job's scope policies to the result exactly as it
  leaves (event AFTER_TASK_RESULT_FILTER, after every filter) and withholds it, in place, if anything
  breaks them. It cannot stop Python that a job brings along (BYOC) from patching the process: a site
  that does not trust job code accepts only pre-installed code (see the README).
- :func:`example_scopes` / :func:`write_site_privacy`: the shipped scopes (``fedmsa``, ``full_model``,
  ``metrics_only``) and the helper that writes or merges a site's ``local/privacy.json``.
- :func:`derive_patterns` / :func:`check_patterns`: allow-list patterns computed from the site's own
  model (``fedfms.networks.transmitted_keys`` of a network the site builds from its installed fedfms),
  and what a list of patterns lets out of that model; ``tools/site_privacy.py`` prints both.

What a policy cannot see: the values inside an allowed tensor (a hostile job could hide data in
adapter weights), and messages that are not task results (fed events such as TensorBoard streaming,
aux messages). It fixes which tensors, kinds, types and sizes leave, which is what a reviewer can read.
"""

from __future__ import annotations

import fnmatch
import json
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.filter import Filter
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FilterKey, FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable, make_reply
from torch import nn

from fedfms.core.io import write_json_atomic
from fedfms.core.wire import BYTES_SENT, FINGERPRINT_KEY, TRAIN_LOSS
from fedfms.networks import transmitted_keys
from fedfms.nnunet import check_fingerprint

MODES = ("drop", "reject")
#: DXO kinds whose data are named tensors; METRICS data are named numbers
TENSOR_KINDS = (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF)
DATA_KINDS = (*TENSOR_KINDS, DataKind.METRICS)
#: float16 counts as float: the job's half-precision transfer (fedfms.runtime.precision) sends it
DTYPES = ("float32", "float16")
#: what a fedfms site result carries in its DXO meta (executor and transfer filters), nothing else
META_KEYS = (MetaKey.NUM_STEPS_CURRENT_ROUND, MetaKey.INITIAL_METRICS, MetaKey.FILTER_HISTORY, TRAIN_LOSS, BYTES_SENT)
#: limits on plain values in meta and headers: string length, list / dict entries
MAX_STRING, MAX_ENTRIES = 256, 16
#: a sane single tensor: 16 M values (SAM ViT-H's largest is 6.6 M)
MAX_TENSOR_ELEMENTS = 16 * 2**20
#: the result's return code when a policy withholds it
WITHHELD = ReturnCode.TASK_RESULT_FILTER_ERROR
_DXO_KEY = "DXO"  # where DXO.update_shareable puts the content (nvflare.apis.dxo._KEY_DXO)


@dataclass(frozen=True)
class Violation:
    """One item of a result that breaks a policy: ``part`` is "content" (a top-level key), "header",
    "meta", "tensor", "metric" or "result" (the whole result); ``name`` its key; ``reason`` why."""

    part: str
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.part} {self.name!r}: {self.reason}"


def _is_number(value: object) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and np.issubdtype(value.dtype, np.number)
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _scalar(value: object) -> bool:
    return value is None or isinstance(value, bool) or _is_number(value) or (isinstance(value, str) and len(value) <= MAX_STRING)


def plain_value_problem(value: object) -> Optional[str]:
    """Why ``value`` may not leave a site in meta or headers, or None: allowed are None, bools, numbers,
    strings of at most MAX_STRING characters, lists of at most MAX_ENTRIES such strings (filter
    history) and flat dicts of at most MAX_ENTRIES string keys -> such scalars (INITIAL_METRICS)."""
    if _scalar(value):
        return None
    if isinstance(value, str):
        return f"string of {len(value)} characters (limit {MAX_STRING})"
    if isinstance(value, (list, tuple)):
        if len(value) <= MAX_ENTRIES and all(isinstance(v, str) and len(v) <= MAX_STRING for v in value):
            return None
        return f"list of {len(value)} items (allowed: at most {MAX_ENTRIES} short strings)"
    if isinstance(value, dict):
        if len(value) <= MAX_ENTRIES and all(
                isinstance(k, str) and len(k) <= MAX_STRING and _scalar(v) for k, v in value.items()):
            return None
        return f"dict of {len(value)} entries (allowed: at most {MAX_ENTRIES} names -> numbers or short strings)"
    kind = f"array {value.dtype}{list(value.shape)}" if isinstance(value, np.ndarray) else type(value).__name__
    return f"{kind} values cannot leave the site here"


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype}, shape {tuple(value.shape)}"
    return type(value).__name__


def _check_names(patterns: Iterable[str], option: str) -> Tuple[str, ...]:
    patterns = tuple(patterns)
    if not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"ResultPolicy {option} must be a list of non-empty strings, got {patterns!r}")
    return patterns


class ResultPolicy(Filter):
    """A site's task result filter: only what the scope allows leaves (see the module docstring).

    Args (all from the site's privacy.json):
        allow: glob patterns (fnmatch, ``*`` spans dots) of the tensor names that may leave.
        data_kinds: DXO kinds that may leave. METRICS data are named numbers; every other allowed kind
            (WEIGHTS, WEIGHT_DIFF, or the kind a compression filter sends) is checked as named tensors.
        dtypes: numpy dtype names tensors may have (add "int8" for int8-compressed updates).
        pattern_dtypes: extra dtypes for the tensors matching a pattern, e.g.
            {"*.num_batches_tracked": ["int64"]} for BatchNorm counters (U-Net).
        max_tensor_elements: values one tensor may hold.
        max_result_bytes: bytes of all tensors of one result together (0: no cap).
        max_metric_values: values one metric may hold (1: scalars only).
        meta_keys: DXO meta keys that may leave (values must be plain, see plain_value_problem).
        nnunet_fingerprint: also let out a COLLECTION whose data is exactly {"fingerprint": F}, no meta,
            where F passes nnU-Net's fingerprint audit (``fedfms.nnunet.check_fingerprint``: exact keys,
            numbers only); anything else in a COLLECTION is withheld.
        mode: "drop" (remove what breaks the policy, send the rest) or "reject" (withhold the result).
    """

    def __init__(
        self,
        allow: Sequence[str] = ("*",),
        data_kinds: Sequence[str] = DATA_KINDS,
        dtypes: Sequence[str] = DTYPES,
        pattern_dtypes: Optional[Mapping[str, Sequence[str]]] = None,
        max_tensor_elements: int = MAX_TENSOR_ELEMENTS,
        max_result_bytes: int = 0,
        max_metric_values: int = 1,
        meta_keys: Sequence[str] = META_KEYS,
        nnunet_fingerprint: bool = False,
        mode: str = "drop",
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"ResultPolicy mode must be one of {MODES}, got {mode!r}")
        known = {k.value for k in DataKind}
        if not {getattr(k, "value", k) for k in data_kinds} <= known - {DataKind.COLLECTION.value}:
            raise ValueError(f"ResultPolicy data_kinds must be among {sorted(known - {'COLLECTION'})}, got {list(data_kinds)}")
        for option, value in (("dtypes", dtypes), *((f"pattern_dtypes[{p!r}]", d) for p, d in (pattern_dtypes or {}).items())):
            for dtype in _check_names(value, option):
                np.dtype(dtype)  # TypeError naming an unknown dtype
        if min(max_tensor_elements, max_metric_values) < 1 or max_result_bytes < 0:
            raise ValueError("ResultPolicy max_tensor_elements and max_metric_values must be >= 1, max_result_bytes >= 0")
        self.allow = _check_names(allow, "allow")
        self.data_kinds = tuple(getattr(k, "value", k) for k in data_kinds)
        self.dtypes = tuple(dtypes)
        self.pattern_dtypes = {p: tuple(d) for p, d in (pattern_dtypes or {}).items()}
        self.max_tensor_elements, self.max_result_bytes = max_tensor_elements, max_result_bytes
        self.max_metric_values = max_metric_values
        self.meta_keys = _check_names(meta_keys, "meta_keys")
        self.nnunet_fingerprint = bool(nnunet_fingerprint)
        self.mode = mode

    # -- the policy, as pure functions of a result ------------------------------------------------
    def allows_name(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.allow)

    def tensor_problem(self, name: object, value: object) -> Optional[str]:
        """Why the tensor ``name`` may not leave, or None."""
        if not isinstance(name, str) or not self.allows_name(name):
            return "name not allowed by the scope"
        if not isinstance(value, np.ndarray):
            return f"{type(value).__name__} is not a numpy array"
        dtypes = self.dtypes + sum((d for p, d in self.pattern_dtypes.items() if fnmatch.fnmatchcase(name, p)), ())
        if value.dtype.name not in dtypes:
            return f"dtype {value.dtype} not allowed (allowed: {', '.join(dtypes)})"
        if value.size > self.max_tensor_elements:
            return f"{value.size} values (limit {self.max_tensor_elements})"
        return None

    def metric_problem(self, name: object, value: object) -> Optional[str]:
        """Why the metric ``name`` may not leave, or None."""
        if not isinstance(name, str) or len(name) > MAX_STRING:
            return "metric names must be short strings"
        if _is_number(value):
            return None
        if isinstance(value, (list, tuple, np.ndarray)):
            try:
                values = np.asarray(value)
            except ValueError:  # ragged
                return f"{type(value).__name__}: only numbers or vectors of at most {self.max_metric_values} numbers may leave"
            if values.ndim == 1 and np.issubdtype(values.dtype, np.number) and values.size <= self.max_metric_values:
                return None
            return f"{_describe(values)}: only numbers or vectors of at most {self.max_metric_values} numbers may leave"
        return f"{type(value).__name__}: only numbers may leave"

    def review(self, result: Shareable) -> Tuple[List[Violation], bool]:
        """Every violation of ``result`` and whether it is fatal (the result cannot be sent in part:
        malformed, a data kind not allowed, over the size cap). Does not change ``result``."""
        violations: List[Violation] = []
        headers = result.get(ReservedHeaderKey.HEADERS) or {}
        if not isinstance(headers, dict):
            return [Violation("result", "headers", f"headers must be a dict, got {type(headers).__name__}")], True
        ok = result.get_return_code(ReturnCode.OK) == ReturnCode.OK
        content = {_DXO_KEY} if ok else set()  # an error reply carries no content
        for key in result:
            if key != ReservedHeaderKey.HEADERS and key not in content:
                violations.append(Violation("content", str(key), "only a DXO may leave" if ok else "an error reply carries no content"))
        for key, value in headers.items():
            problem = plain_value_problem(value)
            if problem:
                violations.append(Violation("header", str(key), problem))
        if not ok or _DXO_KEY not in result:
            return violations, False
        try:
            dxo = from_shareable(result)
        except Exception as err:  # whatever NVFlare cannot decode cannot be reviewed either
            return violations + [Violation("result", "DXO", f"not a valid DXO: {err}")], True
        return self._review_dxo(dxo, violations)

    def _review_dxo(self, dxo: DXO, violations: List[Violation]) -> Tuple[List[Violation], bool]:
        kind = getattr(dxo.data_kind, "value", dxo.data_kind)
        if kind == DataKind.COLLECTION and self.nnunet_fingerprint:
            problems = self._fingerprint_violations(dxo)
            return violations + problems, bool(problems)
        if kind not in self.data_kinds:
            return violations + [Violation("result", "DXO", f"data kind {kind} not allowed (allowed: {', '.join(self.data_kinds)})")], True
        if not isinstance(dxo.data, dict) or not isinstance(dxo.meta, dict):
            return violations + [Violation("result", "DXO", "data and meta must be dicts")], True
        for key, value in dxo.meta.items():
            if key not in self.meta_keys:
                violations.append(Violation("meta", str(key), "meta key not allowed by the scope"))
            elif plain_value_problem(value):
                violations.append(Violation("meta", str(key), plain_value_problem(value)))
        if kind == DataKind.METRICS:
            violations += [Violation("metric", str(n), p) for n, v in dxo.data.items() if (p := self.metric_problem(n, v))]
            return violations, False
        total = 0
        for name, value in dxo.data.items():
            problem = self.tensor_problem(name, value)
            if problem:
                violations.append(Violation("tensor", str(name), f"{_describe(value)}: {problem}"))
            else:
                total += value.nbytes
        if self.max_result_bytes and total > self.max_result_bytes:
            return violations + [Violation("result", "DXO", f"{total} bytes of tensors (cap {self.max_result_bytes})")], True
        return violations, False

    @staticmethod
    def _fingerprint_violations(dxo: DXO) -> List[Violation]:
        """Why a COLLECTION is not exactly one audited nnU-Net fingerprint (empty: it is)."""
        if not isinstance(dxo.data, dict) or set(dxo.data) != {FINGERPRINT_KEY} or dxo.meta:
            keys = sorted(map(str, dxo.data)) if isinstance(dxo.data, dict) else type(dxo.data).__name__
            return [Violation("result", "DXO", f"a COLLECTION may only hold {FINGERPRINT_KEY!r} without meta, "
                                               f"got keys {keys} and meta {sorted(map(str, dxo.meta or {}))}")]
        try:
            check_fingerprint(dxo.data[FINGERPRINT_KEY], source="in the result")
        except Exception as err:  # FingerprintError, or whatever a malformed value raises
            return [Violation("result", FINGERPRINT_KEY, str(err))]
        return []

    def cleaned(self, result: Shareable, violations: Sequence[Violation]) -> Shareable:
        """``result`` without the items ``violations`` name (non-fatal ones), changed in place."""
        drop = {(v.part, v.name) for v in violations}
        headers = result.get(ReservedHeaderKey.HEADERS) or {}
        for key in [k for k in headers if ("header", str(k)) in drop]:
            del headers[key]
        for key in [k for k in result if ("content", str(k)) in drop]:
            del result[key]
        if _DXO_KEY in result and any(v.part in ("meta", "tensor", "metric") for v in violations):
            dxo = from_shareable(result)
            dxo.meta = {k: v for k, v in dxo.meta.items() if ("meta", str(k)) not in drop}
            dxo.data = {k: v for k, v in dxo.data.items() if ("tensor", str(k)) not in drop and ("metric", str(k)) not in drop}
            dxo.update_shareable(result)
        return result

    # -- NVFlare ----------------------------------------------------------------------------------
    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        violations, fatal = self.review(shareable)
        if not violations:
            return shareable
        withhold = fatal or self.mode == "reject"
        action = "withheld the result" if withhold else "removed"
        where = _where(fl_ctx)
        for violation in violations:
            self.log_warning(fl_ctx, f"{where}: {action}: {violation}")
        if withhold:
            self.log_error(fl_ctx, f"{where}: result withheld ({len(violations)} violations, mode {self.mode})")
            return make_reply(WITHHELD)
        return self.cleaned(shareable, violations)


def _where(fl_ctx: FLContext) -> str:
    """"site HK, privacy scope 'fedmsa', task train" for log lines."""
    site = fl_ctx.get_identity_name() if fl_ctx is not None else "?"
    scope = fl_ctx.get_prop(FLContextKey.EFFECTIVE_JOB_SCOPE_NAME) if fl_ctx is not None else None
    task = fl_ctx.get_prop(FLContextKey.TASK_NAME) if fl_ctx is not None else None
    return f"site {site}, privacy scope {scope or '(none)'!r}, task {task or '?'}"


def scope_policies(fl_ctx: FLContext) -> List[ResultPolicy]:
    """The ResultPolicy filters of the job's effective privacy scope (outgoing results)."""
    scope = fl_ctx.get_prop(FLContextKey.SCOPE_OBJECT)
    filters = getattr(scope, "task_result_filters", None) or {}
    return [f for f in filters.get(FilterKey.OUT, []) if isinstance(f, ResultPolicy)]


class ResultPolicyGuard(FLComponent):
    """Re-applies the job's scope policies to each result as it leaves the site, after every filter.

    Listed under ``components`` of the site's privacy.json (NVFlare adds those to every job's run as
    event handlers, after the job's own). On AFTER_TASK_RESULT_FILTER it reviews the final result
    against every ResultPolicy of the job's scope; the scope's filter already removed what it saw, so a
    violation here was added by a job filter that ran after it, and the result is withheld whatever the
    mode: emptied in place to an error reply (an event handler cannot replace the object).
    """

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type != EventType.AFTER_TASK_RESULT_FILTER:
            return
        result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
        if not isinstance(result, Shareable):
            return
        violations = [v for policy in scope_policies(fl_ctx) for v in policy.review(result)[0]]
        if not violations:
            return
        where = _where(fl_ctx)
        for violation in violations:
            self.log_warning(fl_ctx, f"{where}: after the job's filters: withheld the result: {violation}")
        self.log_error(fl_ctx, f"{where}: result withheld: the job's own filters changed it after the site's filter")
        result.clear()
        result.update(make_reply(WITHHELD))


# -- the shipped scopes and a site's privacy.json ----------------------------------------------------
#: component id of the guard in privacy.json (NVFlare adds it to each job's components: keep it unique)
GUARD_ID = "fedfms_result_guard"
_POLICY_PATH = f"{ResultPolicy.__module__}.{ResultPolicy.__name__}"
_GUARD_PATH = f"{ResultPolicyGuard.__module__}.{ResultPolicyGuard.__name__}"

#: What every shipped scope states explicitly (the ResultPolicy defaults), so the site's file reads whole.
_TENSOR_RULES = {"dtypes": list(DTYPES), "max_tensor_elements": MAX_TENSOR_ELEMENTS}
_COMMON_RULES = {"max_metric_values": 1, "meta_keys": list(META_KEYS)}
#: The shipped scopes, as a site's privacy.json writes them (ResultPolicy args, mode added). Caps: the
#: largest result of each kind with SAM ViT-H in float32 (FedMSA 224 MB, FedSAM 2.56 GB), rounded up.
EXAMPLE_SCOPES: Dict[str, dict] = {
    # FedMSA: adapters, mask decoder and class head (fedfms.networks: MSASegmenter.transmitted_keys)
    "fedmsa": {"allow": ["*.space_adapter.*", "*.mlp_adapter.*", "mask_decoder.*", "class_head.*"],
               "data_kinds": [k.value for k in DATA_KINDS], **_TENSOR_RULES, "max_result_bytes": 512 * 2**20,
               **_COMMON_RULES},
    # FedSAM and FedU-Net send their whole trainable state; U-Net's BatchNorm counters are int64 scalars
    "full_model": {"allow": ["*"], "data_kinds": [k.value for k in DATA_KINDS], **_TENSOR_RULES,
                   "pattern_dtypes": {"*.num_batches_tracked": ["int64"]}, "max_result_bytes": 4 * 2**30,
                   **_COMMON_RULES},
    # FednnU-Net: the whole planned network, and before training the site's nnU-Net fingerprint
    "fednnunet": {"allow": ["*"], "data_kinds": [k.value for k in DATA_KINDS], **_TENSOR_RULES,
                  "max_result_bytes": 4 * 2**30, "nnunet_fingerprint": True, **_COMMON_RULES},
    # evaluation only (cross-site validation, a held-out site): aggregate metrics, no tensor
    "metrics_only": {"allow": [], "data_kinds": [DataKind.METRICS.value], **_COMMON_RULES},
}
SCOPE_NAMES = tuple(EXAMPLE_SCOPES)


def example_scopes(mode: str = "drop", scopes: Sequence[str] = SCOPE_NAMES) -> List[dict]:
    """The shipped scopes as privacy.json entries ({"name", "task_result_filters"}), in ``mode``."""
    unknown = set(scopes) - set(EXAMPLE_SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; shipped: {list(SCOPE_NAMES)}")
    ResultPolicy(mode=mode)  # ValueError for a bad mode, before anything is written
    return [{"name": name, "task_result_filters": [{"path": _POLICY_PATH, "args": {**EXAMPLE_SCOPES[name], "mode": mode}}]}
            for name in scopes]


def write_site_privacy(local_dir: str | Path, mode: str = "drop", default_scope: Optional[str] = None,
                       scopes: Sequence[str] = SCOPE_NAMES) -> Path:
    """Write or merge ``local_dir/privacy.json`` with the shipped ``scopes`` and the guard component.

    Scopes of the same name are replaced; the site's other scopes, components and default stay.
    ``default_scope``: the scope of jobs that name none (None: keep the file's; without one, NVFlare
    refuses such jobs). Returns the file written (atomically)."""
    target = Path(local_dir) / "privacy.json"
    config = json.loads(target.read_text()) if target.is_file() else {}
    if not isinstance(config, dict):
        raise ValueError(f"{target}: expected a JSON object with 'scopes', got {type(config).__name__}")
    ours = example_scopes(mode, scopes)
    names = {s["name"] for s in ours}
    config["scopes"] = [s for s in config.get("scopes", []) if s.get("name") not in names] + ours
    config["components"] = [c for c in config.get("components", []) if c.get("id") != GUARD_ID] + [
        {"id": GUARD_ID, "path": _GUARD_PATH, "args": {}}]
    if default_scope is not None:
        if default_scope not in {s.get("name") for s in config["scopes"]}:
            raise ValueError(f"default scope {default_scope!r} is not a scope of {target}")
        config["default_scope"] = default_scope
    return write_json_atomic(target, config)


# -- allow-list patterns from the site's own model -------------------------------------------------
_INDEX = re.compile(r"^\d+$")


def derive_patterns(network: nn.Module) -> List[str]:
    """The tightest glob patterns that let out exactly ``transmitted_keys(network)`` of its state dict.

    Each transmitted name becomes its shortest module prefix whose tensors are all transmitted
    (``mask_decoder.transformer.*``), then numeric path parts become ``*`` wherever that still lets
    out no other tensor (``image_encoder.blocks.*.space_adapter.*``). Built from the network the site
    constructs with its own fedfms, not from anything in the job."""
    names = list(network.state_dict())
    sent = set(transmitted_keys(network))
    kept = [n for n in names if n not in sent]

    def only_sent(pattern: str) -> bool:
        return not any(fnmatch.fnmatchcase(n, pattern) for n in kept)

    patterns: List[str] = []
    for name in names:
        if name not in sent or any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        parts = name.split(".")
        prefix = next((".".join(parts[:i]) + ".*" for i in range(1, len(parts)) if only_sent(".".join(parts[:i]) + ".*")), name)
        pieces = prefix.split(".")
        for i, piece in enumerate(pieces):
            if _INDEX.match(piece) and only_sent(".".join(pieces[:i] + ["*"] + pieces[i + 1:])):
                pieces[i] = "*"
        patterns.append(".".join(pieces))
    return patterns


@dataclass(frozen=True)
class PatternCheck:
    """What ``patterns`` let out of a network: ``blocked`` transmitted tensors (the job would fail),
    ``extra`` tensors beyond the transmitted set (frozen weights the scope would not stop), and the
    transmitted bytes in float32."""

    blocked: Tuple[str, ...]
    extra: Tuple[str, ...]
    transmitted_bytes: int


def check_patterns(patterns: Collection[str], network: nn.Module) -> PatternCheck:
    """Compare ``patterns`` with the tensors ``network`` transmits (see PatternCheck)."""
    state = network.state_dict()
    sent = set(transmitted_keys(network))
    allowed = {n for n in state if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
    size = sum(state[n].numel() * state[n].element_size() for n in sent)
    return PatternCheck(tuple(sorted(sent - allowed)), tuple(sorted(allowed - sent)), size)


def read_scope_policies(privacy_json: str | Path, scope: str) -> List[ResultPolicy]:
    """The ResultPolicy filters ``scope`` of a site's privacy.json defines (to check them offline)."""
    config = json.loads(Path(privacy_json).read_text())
    entry = next((s for s in config.get("scopes", []) if s.get("name") == scope), None)
    if entry is None:
        raise ValueError(f"{privacy_json} defines no scope {scope!r} (scopes: {[s.get('name') for s in config.get('scopes', [])]})")
    return [ResultPolicy(**f.get("args", {})) for f in entry.get("task_result_filters", []) if f.get("path") == _POLICY_PATH]
