#!/usr/bin/env python
"""Prepare a multi-site dataset from a local copy of its public release into per-site 2D samples.

    python tools/prepare_data.py DATASET --src SRC --out OUT [--sites ...] [--skip-bad] [--seed N]

Writes OUT/DATASET/SITE/datalist.json (+ images/, labels/) and OUT/DATASET/dataset.json. Datasets come
from the registry in fedfms.data (listed below); each dataset's release layout and own options are
shown by `python tools/prepare_data.py DATASET --help`. Exit status: 0 done, 1 bad input (the message
names the file), 2 usage error (e.g. an unknown site).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fedfms.data import (
    DEFAULT_SEED,
    DataError,
    SiteError,
    available_datasets,
    format_summary,
    get_preparer,
    prepare_dataset,
    terminate_as_exit,
)

COMMON = ("dataset", "src", "out", "sites", "skip_bad", "seed", "verbose")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name in available_datasets():
        preparer = get_preparer(name)
        layout = sys.modules[type(preparer).__module__].__doc__  # each preparer module documents its release layout
        p = sub.add_parser(name, help=preparer.source_release, description=layout or preparer.source_release,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--src", type=Path, required=True, help="root folder of your copy of the public release")
        p.add_argument("--out", type=Path, required=True, help="output root; writes OUT/%s/SITE/" % name)
        p.add_argument("--sites", nargs="+", metavar="SITE",
                       help=f"sites to prepare (default: {' '.join(preparer.sites)}); names are case-insensitive")
        p.add_argument("--skip-bad", action="store_true",
                       help="skip bad cases (listed in the summary and in metadata.skipped) instead of stopping")
        p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the 9:1 train/validation split by volume")
        p.add_argument("-v", "--verbose", action="store_true", help="log each skipped case as it happens")
        preparer.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(message)s")
    options = {k: v for k, v in vars(args).items() if k not in COMMON}
    try:
        with terminate_as_exit():  # a kill (SIGTERM) still removes the unfinished site's temp folder
            summaries = prepare_dataset(args.dataset, args.src, args.out, args.sites, seed=args.seed,
                                        skip_bad=args.skip_bad, options=options)
    except SiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.site is not None:
            print(f"nothing was written for site {exc.site} (sites finished before it are complete)", file=sys.stderr)
        if exc.case is not None:
            print("fix or remove the file, or rerun with --skip-bad to skip bad cases and list them", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the unfinished site was not written (sites finished before it are complete)", file=sys.stderr)
        return 130
    print(format_summary(args.dataset, summaries))
    print(f"wrote {args.out / args.dataset}/dataset.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
