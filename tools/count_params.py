#!/usr/bin/env python
"""Print total, trainable and transmitted parameters of FedSAM and FedMSA models, and the fp32 bytes
a site sends per round, beside the paper's learnable-parameter counts. Builds on the meta device."""

import argparse
import json

from fedfms.networks.configs import ENCODER_CONFIGS
from fedfms.registry import get_method, method_names
from fedfms.reporting.parameters import PAPER_DIFFERENCE, count_parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-types", nargs="+", default=["vit_b", "vit_l"],
                        choices=sorted(ENCODER_CONFIGS), help="encoders to count (default: vit_b vit_l)")
    parser.add_argument("--num-classes", type=int, default=1, help="output channels (1 binary, 2 fundus OD+OC)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    methods = {m.bundle: m.label for m in map(get_method, method_names(federated=True)) if m.network is not None}
    rows = [
        count_parameters(network, model_type, args.num_classes)
        for model_type in args.model_types
        for network in methods
    ]
    if args.json:
        print(json.dumps([row.as_dict() for row in rows], indent=2))
        return
    print(f"{'model':<16}{'total':>14}{'trainable':>14}{'transmitted':>14}{'MB/round':>11}{'paper learnable':>18}")
    for row in rows:
        paper = f"{row.paper_learnable / 1e6:.1f} M" if row.paper_learnable else "-"
        print(
            f"{methods[row.network] + ' ' + row.model_type:<16}{row.total / 1e6:>12.1f} M{row.trainable / 1e6:>12.1f} M"
            f"{row.transmitted / 1e6:>12.1f} M{row.transmitted_bytes / 2**20:>11.1f}{paper:>18}"
        )
    print("MB/round: fp32 tensors one site uploads per round; it downloads the same set.")
    print(PAPER_DIFFERENCE)


if __name__ == "__main__":
    main()
