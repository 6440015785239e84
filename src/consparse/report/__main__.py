"""``python -m consparse.report <dir>``: aggregate every results.json below a directory.

Exit status: 0 when the report was written, 1 when there is nothing to report (no results.json),
2 for bad arguments or results.json files too old to report (``consparse.report.collect``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from consparse.errors import ConfigError
from consparse.report.collect import NoResultsError
from consparse.report.summary import DEFAULT_TOLERANCE
from consparse.report.write import write_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m consparse.report",
        description="Aggregate the results.json files below DIR (a Hydra sweep or run directory) into "
        "results.csv, summary.csv, results.md and PNG plots.",
    )
    parser.add_argument("root", type=Path, metavar="DIR", help="directory searched recursively for results.json")
    parser.add_argument("--out", type=Path, default=None, metavar="OUT", help="where to write the report (default: DIR)")
    parser.add_argument(
        "--group-by",
        action="append",
        default=None,
        metavar="KEY[,KEY...]",
        help="keys that tell runs of one method apart besides seed and target density, e.g. "
        "method.penalty (override keys or results.csv columns; repeatable). Default: the recorded "
        "overrides that differ between the runs of one method (or block).",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"relative tolerance on density above its target (default {DEFAULT_TOLERANCE})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    group_by = None if args.group_by is None else [k.strip() for item in args.group_by for k in item.split(",") if k.strip()]
    try:
        paths = write_report(args.root, args.out, group_by=group_by, tolerance=args.tolerance)
    except NoResultsError as exc:
        print(f"consparse: error: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"consparse: error: {exc}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
