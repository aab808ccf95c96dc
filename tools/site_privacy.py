#!/usr/bin/env python
"""A site's privacy policy for fedfms jobs: write it into local/privacy.json, and check what it lets
out of the site's own model (built here from the installed fedfms, not from any job).

    python tools/site_privacy.py write STARTUP_KIT/local [--mode drop|reject] [--default-scope fedmsa]
    python tools/site_privacy.py check --method fedmsa --model-type vit_b [--privacy STARTUP_KIT/local/privacy.json]

`write` adds the shipped scopes (fedmsa, full_model, fednnunet, metrics_only) and the guard component to the
site's privacy.json, keeping its other scopes. `check` builds the method's network on the meta device
(seconds, no memory), prints the scope the method's jobs declare, the tensors the scope's patterns
block or let out beyond what the network transmits, the result size against the scope's cap, and the
tightest patterns for this model; exit 1 if the scope would block a transmitted tensor or the cap is
too small (the job could not run there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fedfms.networks.configs import ENCODER_CONFIGS
from fedfms.registry import get_method, method_names
from fedfms.registry.methods import network_class
from fedfms.runtime.privacy import (
    EXAMPLE_SCOPES, MODES, SCOPE_NAMES, ResultPolicy, check_patterns, derive_patterns, read_scope_policies,
    write_site_privacy,
)


def _check(args: argparse.Namespace) -> int:
    method = get_method(args.method)
    if method.network is None:
        print(f"{args.method}: no fedfms network to check (its jobs declare scope {method.privacy_scope!r})")
        return 2
    with torch.device("meta"):
        network = network_class(method.bundle)(model_type=args.model_type, num_classes=args.num_classes)
    scope = method.privacy_scope
    if args.privacy:
        policies = read_scope_policies(args.privacy, scope)
        source = str(args.privacy)
    else:
        policies, source = [ResultPolicy(**EXAMPLE_SCOPES[scope])], "the shipped example"
    print(f"{args.method} {args.model_type} ({args.num_classes} classes): jobs declare scope {scope!r}; policy from {source}")
    if not policies:
        print(f"  scope {scope!r} has no ResultPolicy filter: NOTHING is checked at this site")
        return 1
    status = 0
    for policy in policies:
        check = check_patterns(policy.allow, network)
        print(f"  allow {list(policy.allow)}, mode {policy.mode}")
        print(f"  transmitted: {check.transmitted_bytes:,} bytes float32; cap {policy.max_result_bytes or 'none'}")
        if check.blocked:
            print(f"  BLOCKED transmitted tensors ({len(check.blocked)}): {', '.join(check.blocked[:10])}")
            status = 1
        if policy.max_result_bytes and check.transmitted_bytes > policy.max_result_bytes:
            print("  the cap is smaller than one result: every result would be withheld")
            status = 1
        print(f"  let out beyond the transmitted set ({len(check.extra)}): {', '.join(check.extra[:10]) or 'nothing'}"
              + (" ..." if len(check.extra) > 10 else ""))
    print(f"  tightest patterns for this model: {derive_patterns(network)}")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write", help="add the shipped scopes and the guard to LOCAL_DIR/privacy.json")
    write.add_argument("local_dir", type=Path, help="the site's startup kit local/ folder")
    write.add_argument("--mode", choices=MODES, default="drop",
                       help="drop: remove what breaks the policy and send the rest (default); reject: withhold the result")
    write.add_argument("--default-scope", choices=SCOPE_NAMES, help="scope of jobs that declare none (default: keep the file's)")
    check = commands.add_parser("check", help="what a scope lets out of the site's own model")
    check.add_argument("--method", choices=method_names(federated=True), default="fedmsa", help="default: fedmsa")
    check.add_argument("--model-type", choices=sorted(ENCODER_CONFIGS), default="vit_b", help="default: vit_b")
    check.add_argument("--num-classes", type=int, default=1, help="output channels (1 binary, 2 fundus OD+OC)")
    check.add_argument("--privacy", type=Path, help="a site's privacy.json (default: the shipped scopes)")
    args = parser.parse_args(argv)
    if args.command == "write":
        path = write_site_privacy(args.local_dir, mode=args.mode, default_scope=args.default_scope)
        print(f"wrote {path}: scopes {', '.join(SCOPE_NAMES)} (mode {args.mode}) and the result guard")
        return 0
    return _check(args)


if __name__ == "__main__":
    sys.exit(main())
