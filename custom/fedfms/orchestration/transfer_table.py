"""The bytes each transfer option puts on the wire per site and round, for the federated SAM methods
at a given encoder: measured by running each job's own filter chains in process (``transfer_sizes``),
for the efficiency benchmark and the README."""

from __future__ import annotations

from typing import Dict, List

from fedfms.networks import encoder_config
from fedfms.registry import PAPER, get_method
from fedfms.runtime.selection import select_outgoing, transmitted_names

from .jobs import JobSettings
from .transfer import EXAMPLES, transfer_sizes


def transfer_table(methods=("fedsam", "fedmsa"), model_type: str = PAPER.model_type) -> List[Dict[str, object]]:
    """One row per federated SAM method and transfer option of ``EXAMPLES``: {"method", "transfer",
    "down_first", "up", "down"} in bytes per site and round (``transfer_sizes`` on the method's
    network, random init: the tensor sizes of an official checkpoint)."""
    rows = []
    for method in methods:
        network = get_method(method).network(model_type=model_type)
        weights = select_outgoing(network.state_dict(), transmitted_names(network), f"{method} {model_type}")
        del network
        for label, options in EXAMPLES.items():
            if options.get("partial_upload_blocks", 0) >= encoder_config(model_type).depth:
                continue
            settings = JobSettings(method, "prostate", PAPER.override(model_type=model_type), **options)
            rows.append({"method": method, "transfer": label, **transfer_sizes(settings, weights)})
    return rows


def transfer_markdown(rows: List[Dict[str, object]]) -> str:
    """The rows of ``transfer_table`` as a markdown table (MB = 10**6 bytes; x = float32 / option, up)."""
    full = {r["method"]: r["up"] for r in rows if r["transfer"] == next(iter(EXAMPLES))}
    lines = ["| method | transfer | up per round | down per round | down, round 0 | up: x smaller |", "|---|---|---|---|---|---|"]
    lines += [f"| {get_method(r['method']).label} | {r['transfer']} | {r['up'] / 1e6:.2f} MB | {r['down'] / 1e6:.2f} MB "
              f"| {r['down_first'] / 1e6:.2f} MB | {full[r['method']] / r['up']:.1f} |" for r in rows]
    return "\n".join(lines)
