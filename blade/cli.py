"""The ``blade`` command: the entry points the Snakemake rules call.

Errors caused by input (config, data) print one clear message and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
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


def _json_arg(text: str, flag: str) -> dict[str, Any]:
    from blade.errors import ConfigError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{flag}: expected a JSON object")
    return value


def _config_json(args: argparse.Namespace, **sections: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--config-json`` → the raw mapping and each named section as its typed, validated config."""
    from blade.config import from_dict

    raw = _json_arg(args.config_json, "--config-json")
    return raw, {name: from_dict(cls, raw.get(name), name) for name, cls in sections.items()}


def cmd_sft(args: argparse.Namespace) -> None:
    from blade.io import write_json
    from blade.model.policy import PolicyConfig
    from blade.tracking import track
    from blade.train.sft import SFTConfig, train_sft

    _, cfgs = _config_json(args, policy=PolicyConfig, sft=SFTConfig)
    policy_cfg, sft_cfg = cfgs["policy"], cfgs["sft"]
    resolved = {**{k: dataclasses.asdict(v) for k, v in cfgs.items()}, "seed": args.seed, "data": args.data}
    with track("sft", args.dataset, "sft", args.seed, resolved, run_dir=args.out) as tracker:
        summary = train_sft(args.data, args.out, policy_cfg, sft_cfg, args.seed, tracker)
        tracker.log_final(summary)
        tracker.log_artifact(f"{args.out}/train_log.parquet")
    write_json(f"{args.out}/summary.json", summary)
    print(f"sft done: {summary}")


def cmd_rollout(args: argparse.Namespace) -> None:
    from blade.align.rollout import RolloutConfig, reference_rollouts
    from blade.io import write_json
    from blade.rewards import RewardConfig
    from blade.tracking import track

    _, cfgs = _config_json(args, rollout=RolloutConfig, reward=RewardConfig)
    cfg, reward_cfg = cfgs["rollout"], cfgs["reward"]
    resolved = {**{k: dataclasses.asdict(v) for k, v in cfgs.items()}, "seed": args.seed, "data": args.data,
                "model": args.model}
    with track("rollout", args.dataset, "ref", args.seed, resolved) as tracker:
        summary = reference_rollouts(args.data, args.model, args.out, cfg, reward_cfg, args.seed, args.device)
        tracker.log_final(summary)
    write_json(f"{args.out}.summary.json", summary)
    print(f"rollouts done: {summary}")


def cmd_align(args: argparse.Namespace) -> None:
    from blade.align.loop import AlignConfig, align
    from blade.errors import ConfigError
    from blade.io import write_json
    from blade.rewards import RewardConfig
    from blade.tracking import track

    raw, cfgs = _config_json(args, align=AlignConfig, reward=RewardConfig)
    cfg, reward_cfg = cfgs["align"], cfgs["reward"]
    method = raw.get("method")
    if not isinstance(method, dict):
        raise ConfigError('--config-json: needs "method": {"objective": NAME, ...options}')
    resolved = {**{k: dataclasses.asdict(v) for k, v in cfgs.items()}, "method": method, "seed": args.seed, "data": args.data, "sft": args.sft, "rollouts": args.rollouts}
    with track("align", args.dataset, args.method, args.seed, resolved, run_dir=args.out) as tracker:
        summary = align(args.data, args.sft, args.rollouts, args.out, method, cfg, reward_cfg, args.seed, tracker,
                        args.device)
        tracker.log_final(summary)
        tracker.log_artifact(f"{args.out}/diagnostics.parquet")
        tracker.log_artifact(f"{args.out}/valid_curve.parquet")
    write_json(f"{args.out}/summary.json", summary)
    print(f"align done: {summary}")


def cmd_recommend(args: argparse.Namespace) -> None:
    import numpy as np

    from blade.data.canonical import load_prepared
    from blade.evaluation import write_recs

    items, splits, _ = load_prepared(args.data)
    frame = splits[args.split]
    if args.reference:
        from blade.reference import CoOccurrence, most_popular

        if args.reference == "mostpop":
            lists = most_popular(splits["train"], items["item_id"].to_numpy(), len(frame), args.k)
        else:
            lists = CoOccurrence(splits["train"], items["item_id"].to_numpy()).recommend(frame["history"].tolist(), args.k)
    else:
        from blade.model.policy import Policy
        from blade.sampling import ListSampler
        from blade.seeding import seed_everything

        seed_everything(0)
        policy = Policy.load(args.model, args.device)
        policy.model.eval()
        prompts = [policy.codec.prompt(h, args.k) for h in frame["history"]]
        lists = ListSampler(policy, args.k, batch_size=args.batch_size).generate(prompts, greedy=True).items.numpy()
    write_recs(args.out, np.asarray(lists))
    print(f"wrote {len(frame)} lists of {args.k} items to {args.out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from blade.evaluation import evaluate
    from blade.tracking import track

    from blade.errors import ConfigError

    try:
        ks = tuple(int(k) for k in args.ks.split(","))
    except ValueError as exc:
        raise ConfigError(f"--ks {args.ks!r}: give positive integers separated by commas, e.g. 5,10,20") from exc
    config = {"recs": args.recs, "data": args.data, "split": args.split, "ks": list(ks)}
    with track(f"evaluate_{args.split}", args.dataset, args.method, args.seed, config, run_dir=args.out) as tracker:
        summary = evaluate(args.recs, args.data, args.split, args.out, ks)
        tracker.log_final({k: v for k, v in summary.items() if isinstance(v, float)})
        tracker.log_artifacts(args.out)
    k = 10 if 10 in ks else max(ks)
    print(" ".join(f"{m}={summary[m]:.4f}" for m in (f"recall@{k}", f"ndcg@{k}", "invalid_rate") if m in summary))


def _config_sections() -> dict[str, type]:
    from blade.align.loop import AlignConfig
    from blade.align.rollout import RolloutConfig
    from blade.data.canonical import DatasetSpec
    from blade.model.policy import PolicyConfig
    from blade.rewards import RewardConfig
    from blade.train.sft import SFTConfig
    from blade.workflow_config import EvalConfig

    return {"dataset": DatasetSpec, "policy": PolicyConfig, "sft": SFTConfig, "reward": RewardConfig,
            "rollout": RolloutConfig, "align": AlignConfig, "evaluate": EvalConfig}


def cmd_options(args: argparse.Namespace) -> None:
    from blade.align.objective import OBJECTIVES, objective_class
    from blade.config import describe
    from blade.data.sources import SOURCES, get_source
    from blade.errors import ConfigError

    sections = _config_sections()
    if args.name in sections:
        print(describe(sections[args.name]))
    elif args.name in SOURCES:
        print(describe(get_source(args.name).Params))
    else:
        try:
            cls = objective_class(args.name)
        except ConfigError:
            raise ConfigError(f"options: unknown name {args.name!r}; give a config section {sorted(sections)}, "
                              f"a data source {sorted(SOURCES)} or a method objective {sorted(OBJECTIVES)}") from None
        print(describe(cls.config_class) if cls.config_class else f"objective {args.name!r} has no options")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blade", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="turn a data source into the canonical dataset")
    p.add_argument("--spec", help="the dataset spec as JSON: {\"source\": ..., \"params\": {...}, ...}")
    p.add_argument("--config", help="a config YAML file (alternative to --spec)")
    p.add_argument("--dataset", help="the dataset's name under `datasets:` in --config")
    p.add_argument("--out", required=True, help="output directory, e.g. results/data/NAME")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("sft", help="supervised warm-up of the list policy (π_ref)")
    p.add_argument("--data", required=True, help="a prepared dataset directory (results/data/NAME)")
    p.add_argument("--out", required=True, help="output directory (results/models/NAME/sft/seedS)")
    p.add_argument("--config-json", default="{}", help='{"policy": {...}, "sft": {...}} (config sections)')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default="dataset", help="dataset name for tracking")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("rollout", help="sample M reference lists per train context from π_ref, with rewards")
    p.add_argument("--data", required=True, help="a prepared dataset directory")
    p.add_argument("--model", required=True, help="the SFT policy directory (…/sft/seedS/best)")
    p.add_argument("--out", required=True, help="output Parquet file (results/rollouts/NAME/ref/seedS.parquet)")
    p.add_argument("--config-json", default="{}", help='{"rollout": {...}, "reward": {...}}')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="override the policy's device")
    p.add_argument("--dataset", default="dataset", help="dataset name for tracking")
    p.set_defaults(func=cmd_rollout)

    p = sub.add_parser("align", help="align the SFT policy with a method's objective (BLADE or a baseline)")
    p.add_argument("--data", required=True, help="a prepared dataset directory")
    p.add_argument("--sft", required=True, help="the SFT run directory (its best/ is π_ref and the start)")
    p.add_argument("--rollouts", required=True, help="the reference rollouts Parquet file")
    p.add_argument("--out", required=True, help="output directory (results/models/NAME/METHOD/seedS)")
    p.add_argument("--config-json", default="{}",
                   help='{"align": {...}, "reward": {...}, "method": {"objective": NAME, ...}}')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="override the policy's device")
    p.add_argument("--dataset", default="dataset", help="dataset name for tracking")
    p.add_argument("--method", default="blade", help="method name for tracking")
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("recommend", help="write top-K lists for a split (JSON lines {row, items})")
    p.add_argument("--data", required=True, help="a prepared dataset directory")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--k", type=int, default=20, help="list length")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a saved policy directory (greedy constrained decoding)")
    src.add_argument("--reference", choices=["mostpop", "cooc"], help="a classic reference recommender")
    p.add_argument("--device", default=None, help="override the policy's device")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", required=True, help="recommendations file (.jsonl)")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("evaluate", help="score a recommendations file against a split")
    p.add_argument("--recs", required=True, help='JSON lines {"row": r, "items": [ids]}, one per row of the split')
    p.add_argument("--data", required=True, help="a prepared dataset directory")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--ks", default="5,10,20", help="cut-offs, comma-separated")
    p.add_argument("--out", required=True, help="directory for per_user.parquet and metrics.json")
    p.add_argument("--dataset", default="dataset", help="tracking: dataset name")
    p.add_argument("--method", default="external", help="tracking: method name")
    p.add_argument("--seed", type=int, default=0, help="tracking: seed")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("options", help="list the options of a config section, a data source or a method objective")
    p.add_argument("name", help="a section (dataset, policy, sft, reward, rollout, align, evaluate), a source "
                                "(synthetic, bigrec_csv, instruction_json, amazon2018) or an objective (blade, …)")
    p.set_defaults(func=cmd_options)
    return parser


def _terminate(signum, frame) -> None:
    # Snakemake cancels jobs with SIGTERM; raising here lets open MLflow runs end as KILLED
    # instead of staying RUNNING forever.
    raise KeyboardInterrupt(f"terminated by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        args.func(args)
    except BladeError as exc:
        print(f"blade {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
