"""The ``blade`` command: the entry points the Snakemake rules call.

Errors caused by input (config, data) print one clear message and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from blade.errors import BladeError


def _dataset_spec(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    from blade.config import load_yaml
    from blade.errors import ConfigError

    if args.spec:
        try:
            return json.loads(args.spec), "--spec"
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--spec: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not (args.config and args.dataset):
        raise ConfigError("give either --spec JSON or both --config FILE and --dataset NAME")
    config = load_yaml(args.config)
    datasets = config.get("datasets") or {}
    if args.dataset not in datasets:
        raise ConfigError(f"{args.config}: datasets.{args.dataset} is not defined; defined: {sorted(datasets)}")
    return datasets[args.dataset], f"datasets.{args.dataset}"


def cmd_prepare(args: argparse.Namespace) -> None:
    from blade.data.prepare import prepare

    spec, where = _dataset_spec(args)
    stats = prepare(spec, args.out, where=where)
    rows = ", ".join(f"{k} {v}" for k, v in stats["n_rows"].items())
    dropped = ", ".join(f"{k} {v}" for k, v in stats["dropped"].items()) or "nothing"
    print(f"prepared {args.out}: {stats['n_items']} items; rows: {rows}; dropped: {dropped}; {stats['seconds']} s")


def cmd_options(args: argparse.Namespace) -> None:
    from blade.config import describe
    from blade.data.canonical import DatasetSpec
    from blade.data.sources import get_source

    if args.source == "dataset":
        print(describe(DatasetSpec))
    else:
        print(describe(get_source(args.source).Params))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blade", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="turn a data source into the canonical dataset")
    p.add_argument("--spec", help="the dataset spec as JSON: {\"source\": ..., \"params\": {...}, ...}")
    p.add_argument("--config", help="a config YAML file (alternative to --spec)")
    p.add_argument("--dataset", help="the dataset's name under `datasets:` in --config")
    p.add_argument("--out", required=True, help="output directory, e.g. results/data/NAME")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("options", help="list the options of a data source (or 'dataset')")
    p.add_argument("source", help="dataset | synthetic | bigrec_csv | instruction_json | amazon2018")
    p.set_defaults(func=cmd_options)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except BladeError as exc:
        print(f"blade {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
