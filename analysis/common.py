"""What every analysis module shares: the experiment's expected rows, where their files lie, how
they are read (missing ones are recorded, never dropped silently), metric directions, table
writers and the command line. The expected rows themselves are :mod:`analysis.rows` (light enough
for the Snakefile to import); they are re-exported here.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.rows import (BLADE, EQUAL_COST_ROLES, EXTERNAL, ROLE_ORDER, Row, all_tables, blade_n,  # noqa: F401
                           curve_path, equal_cost, eval_dir, expected_rows, is_static, model_dir, role)  # re-exported
from blade.errors import ConfigError, DataError
from blade.experiment import ExperimentConfig, resolve

ALPHA = 0.05
# Rewards that score accuracy alone: a setting of only these is a pure-accuracy setting (the claims
# about accuracy are judged there); `future` is graded accuracy against the user's own train future.
ACCURACY_REWARDS = ("ndcg", "future")


def accuracy_only(exp, setting: str) -> bool:
    """Whether a reward setting's active rewards all score accuracy (:data:`ACCURACY_REWARDS`)."""
    return {n for n, w in exp.rewards[setting].weights.items() if w > 0} <= set(ACCURACY_REWARDS)


# ------------------------------------------------------------------------------------ the config
def load_experiment(args: argparse.Namespace) -> ExperimentConfig:
    """The resolved experiment from ``--config-json`` (the Snakemake ``config`` as JSON) or one or
    more ``--config`` YAML files (later ones overlay earlier ones, as ``--configfile`` does)."""
    import yaml

    if args.config_json:
        try:
            raw = json.loads(args.config_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config-json: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    elif args.config:
        raw = {}
        for path in args.config:
            if not Path(path).is_file():
                raise ConfigError(f"--config {path}: no such file")
            raw = _overlay(raw, yaml.safe_load(Path(path).read_text()) or {})
    else:
        raise ConfigError("give the experiment config: --config-json JSON or --config FILE [FILE ...]")
    return resolve(raw)


def _overlay(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _overlay(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parser(description: str) -> argparse.ArgumentParser:
    """The options every table/figure module takes: where results are, and the experiment."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--results", default="results", help="the DAG's results directory (default: results)")
    p.add_argument("--config-json", help="the experiment config as JSON (what the Snakemake rules pass)")
    p.add_argument("--config", nargs="+", help="or: config YAML file(s), later ones overlaying earlier ones")
    p.add_argument("--split", default="test", choices=["valid", "test"], help="the evaluated split (default: test)")
    return p


def run_cli(main_fn, argv: Sequence[str] | None = None) -> None:
    """Run a module's main; bad input ends with its message and status 2, as the `blade` CLI does."""
    import sys

    from blade.errors import BladeError

    try:
        main_fn(argv)
    except BladeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


# ---------------------------------------------------------------------------------- the files
def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); "
                        "rerun the rule that wrote it") from exc


def read_metrics(results: str | Path, row: Row, seed: int, split: str, sample: bool = False) -> dict[str, float] | None:
    """A run's ``metrics.json`` (plus its ``cost.json`` as ``cost/*`` where metrics.json lacks
    them); None when the run is missing."""
    where = eval_dir(results, row, seed, split, sample)
    path = where / "metrics.json"
    if not path.is_file():
        return None
    metrics = {k: v for k, v in read_json(path).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    cost = where / "cost.json"
    if cost.is_file():
        for key, value in read_json(cost).items():
            metrics.setdefault(f"cost/{key}", value)
    return metrics


def collect_metrics(results: str | Path, rows: Iterable[Row], split: str, sample: bool = False,
                    missing: list[str] | None = None) -> pd.DataFrame:
    """One line per (row, seed) found: ``dataset, setting, method, role, seed`` and every metric of
    its metrics.json. Each expected (row, seed) without a file is appended to ``missing``."""
    lines = []
    for row in rows:
        for seed in row.seeds:
            metrics = read_metrics(results, row, seed, split, sample)
            if metrics is None:
                if missing is not None:
                    missing.append(row.label(seed) + ("/sample" if sample else ""))
                continue
            lines.append({"dataset": row.dataset, "setting": row.setting, "method": row.method, "role": row.role,
                          "seed": seed, **metrics})
    return pd.DataFrame(lines, columns=None if lines else ["dataset", "setting", "method", "role", "seed"])


def equal_cost_methods(rows: Iterable[Row], per_seed: pd.DataFrame) -> list[str]:
    """The methods of ``rows`` that are equal-cost baselines (:func:`analysis.rows.equal_cost`): an
    external row counts when every seed found in ``per_seed`` (:func:`collect_metrics`) has
    ``cost/samples_per_user`` 1 — a seed without a cost.json makes its cost unknown."""
    out = []
    for row in rows:
        mine = per_seed[per_seed["method"] == row.method] if len(per_seed) else per_seed
        samples = mine["cost/samples_per_user"].tolist() if "cost/samples_per_user" in mine else [math.nan] * len(mine)
        if equal_cost(row.role, samples):
            out.append(row.method)
    return out


def pooled_per_user(results: str | Path, row: Row, split: str, sample: bool = False,
                    missing: list[str] | None = None) -> tuple[pd.DataFrame | None, int]:
    """The row's per-user metrics pooled over seeds by user — each user's value averaged over the
    seeds found (NaN-aware), indexed by (``row``, ``context_id``) — and how many seeds were found."""
    frames = []
    for seed in row.seeds:
        path = eval_dir(results, row, seed, split, sample) / "per_user.parquet"
        if not path.is_file():
            if missing is not None:
                missing.append(row.label(seed) + ("/sample" if sample else ""))
            continue
        frame = pd.read_parquet(path)
        for key in ("row", "context_id"):
            if key not in frame.columns:
                raise DataError(f"{path} has no '{key}' column (columns: {list(frame.columns)}); "
                                "rerun `blade evaluate`")
        frames.append(frame.set_index(["row", "context_id"]))
    if not frames:
        return None, 0
    index = frames[0].index
    for frame, seed in zip(frames[1:], row.seeds[1:]):
        if not frame.index.equals(index):
            raise DataError(f"{row.label()}: per_user.parquet of seed {seed} holds other rows than seed "
                            f"{row.seeds[0]}; every seed must be evaluated on the same split")
    stacked = np.stack([f.reindex(columns=frames[0].columns).to_numpy(float) for f in frames])  # (S, U, M)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a user NaN in every seed (ILD of an empty list) stays NaN
        mean = np.nanmean(stacked, axis=0)
    return pd.DataFrame(mean, index=index, columns=frames[0].columns), len(frames)


def read_diagnostics(results: str | Path, row: Row, missing: list[str] | None = None) -> pd.DataFrame:
    """Every seed's diagnostics.parquet stacked, with a ``seed`` column; missing seeds recorded."""
    frames = []
    for seed in row.seeds:
        path = model_dir(results, row, seed) / "diagnostics.parquet"
        if not path.is_file():
            if missing is not None:
                missing.append(row.label(seed) + "/diagnostics")
            continue
        frames.append(pd.read_parquet(path).assign(seed=seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["step", "seed"])


# ------------------------------------------------------------------------------ metric names
LOWER_IS_BETTER = ("mgu_", "dgu_", "gini@", "invalid_rate")


def higher_is_better(metric: str) -> bool:
    """Direction of a metric (docs/method.md §4.2): MGU/DGU (group unfairness), Gini and the invalid rate
    are lower-is-better; accuracy, coverage, entropy, ILD and the tail share are higher-is-better."""
    return not metric.startswith(LOWER_IS_BETTER)


def per_user_name(metric: str) -> str | None:
    """The per-user column a table metric is tested on: the pooled ``mgu_pop@10`` by its per-user
    variant ``mgu_pop_user@10``; catalogue-level numbers (coverage, Gini, entropy) have none."""
    if metric.startswith(("coverage@", "gini@", "entropy@")):
        return None
    for prefix in ("mgu_", "dgu_"):
        if metric.startswith(prefix) and "_user@" not in metric:
            head, k = metric.split("@")
            return f"{head}_user@{k}"
    return metric


def list_k(exp: ExperimentConfig) -> int:
    """The cut-off of the list-level metrics in the tables: 10 where evaluated (the alignment
    lists' length by default), else the largest."""
    return 10 if 10 in exp.evaluate.ks else max(exp.evaluate.ks)


def pretty(metric: str) -> str:
    names = {"recall": "Recall", "ndcg": "NDCG", "mgu_pop": "MGU", "dgu_pop": "DGU", "mgu_genre": "MGU-genre",
             "dgu_genre": "DGU-genre", "coverage": "Coverage", "ild": "ILD", "tail_share": "Tail",
             "gini": "Gini", "entropy": "Entropy"}
    head, _, k = metric.partition("@")
    arrow = "" if higher_is_better(metric) else "↓"
    return f"{names.get(head, head)}@{k}{arrow}" if k else metric


# ---------------------------------------------------------------------------------- writing
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof 1) over seeds; std NaN with one seed."""
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not len(arr):
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else math.nan


def fmt(mean: float, std: float | None = None, digits: int = 4) -> str:
    if mean is None or not np.isfinite(mean):
        return "—"
    text = f"{mean:.{digits}f}"
    if float(text) == 0:  # no "-0.0000" for a difference that rounds to nothing
        text = f"{0.0:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if std is not None and np.isfinite(std) else text


def markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in body)]) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "↓": r"$\downarrow$",
        "†": r"$^\dagger$", "—": "--"}


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(c, c) for c in str(text))


def missing_note(missing: Sequence[str]) -> str:
    """The footer line every table carries: which expected runs were absent (a failed or unfinished
    job), so a partial run is never read as a complete one."""
    if not missing:
        return "Missing: none (every expected run was found)."
    return f"Missing ({len(missing)}): " + ", ".join(sorted(set(missing)))


def write_text(path: str | Path, text: str) -> None:
    from blade.io import write_atomic

    write_atomic(path, lambda p: p.write_text(text))


def write_markdown(path: str | Path, text: str) -> None:
    """``path`` (Markdown) and the same page as HTML beside it (``.html``): Snakemake's report shows
    HTML, images and PDF inline but offers other files only as downloads."""
    write_text(path, text)
    write_text(Path(path).with_suffix(".html"), markdown_to_html(text, Path(path).stem))


_CELL = re.compile(r"(?<!\\)\|")


def _inline(text: str) -> str:
    text = html.escape(text.replace("\\|", "|"), quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`+([^`]+?)`+", r"<code>\1</code>", text)


def markdown_to_html(text: str, title: str) -> str:
    """The Markdown these modules write (headings, pipe tables, bullets, code fences, **bold**,
    `code`) as a standalone HTML page; not a general Markdown renderer."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
            out.append("<pre>" + html.escape("\n".join(lines[i + 1:end])) + "</pre>")
            i = end + 1
            continue
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([c.strip() for c in _CELL.split(lines[i].strip().strip("|"))])
                i += 1
            head, body = block[0], [r for r in block[1:] if not all(set(c) <= {"-", ":"} for c in r)]
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</tbody></table>")
            continue
        heading = re.match(r"^(#{1,4}) (.*)", line)
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<ul><li>{_inline(line[2:])}</li></ul>")
        elif line.startswith("  ") and out and out[-1].endswith("</li></ul>"):  # a bullet's continuation line
            out[-1] = out[-1][: -len("</li></ul>")] + " " + _inline(line.strip()) + "</li></ul>"
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    style = ("body{font-family:sans-serif;font-size:14px;margin:1.5em}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}td:first-child,th:first-child"
             "{text-align:left}th{background:#f3f3f3}pre{background:#f7f7f7;padding:.6em;overflow:auto}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    from blade.io import write_atomic

    write_atomic(path, lambda p: frame.to_csv(p, index=False))


def order_rows(frame: pd.DataFrame, method_col: str = "method", role_col: str = "role") -> pd.DataFrame:
    """References first, BLADE last (the usual table layout), config order within a role."""
    rank = {r: i for i, r in enumerate(ROLE_ORDER)}
    key = frame[role_col].map(rank).fillna(len(rank))
    return frame.assign(_k=key).sort_values("_k", kind="stable").drop(columns="_k")


def read_significance(path: str) -> "pd.DataFrame":
    """significance.csv, or a DataError saying which module writes it."""
    import pandas as pd

    from blade.errors import DataError

    if not Path(path).is_file():
        raise DataError(f"--significance {path}: no such file; run `python -m analysis.significance` first")
    return pd.read_csv(path)
