"""The rows a results tree should hold, and where their files lie — read from the experiment
config only (no pandas, so the Snakefile imports it at no cost).

Row roles (they decide what a row is compared with):
- ``blade``: the ``blade`` method entry — the row the claims are about;
- ``variant``: another entry with ``objective: blade`` (an ablation: estimator, κ0, γ, N, G…);
- ``baseline``: an aligned method with another objective (DPO, GRPO, BOND, vBoN…);
- ``sft`` (π_ref) and ``reference`` (most popular, co-occurrence): trained under no reward setting;
- ``external``: a row made outside the suite (``evaluate.external``: another codebase's lists, scored
  by ``blade evaluate``): trained under no reward setting either, with the seeds it has files for;
- ``bon``: Best-of-N over π_ref at inference (N lists per user: N× the cost of one);
- ``oracle``: Oracle BoN@N — it reads the test target, so it is the static upper bound, not a method.
"Equal-cost baselines" (what BLADE's single greedy list is tested against for the main claim) are
``sft``, ``reference`` and ``baseline`` rows: one list per user, no ground truth — and an external
row whose cost.json says one sample per user (:func:`equal_cost`; its cost is otherwise unknown or
higher, and the row is shown but not judged against).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from blade.align.registry import Method
from blade.eval.config import NO_REWARD, REFERENCE_ROWS
from blade.experiment import ExperimentConfig

BLADE = "blade"
EQUAL_COST_ROLES = ("sft", "reference", "baseline")
EXTERNAL = "external"
ROLE_ORDER = ("sft", "reference", EXTERNAL, "baseline", "bon", "oracle", "variant", "blade")
UNTRAINED_ROLES = ("sft", "reference", EXTERNAL)  # rows trained under no reward setting: directory `none`


# ------------------------------------------------------------------------------------- the rows
@dataclass(frozen=True)
class Row:
    """One row of a table: a method in one dataset × reward-setting table, and the seeds it should have."""

    dataset: str
    setting: str            # the reward setting of the table
    method: str
    role: str
    seeds: tuple[int, ...]

    @property
    def directory(self) -> str:
        """The reward-setting directory its files lie under (``none`` for SFT, the references and
        external rows)."""
        return NO_REWARD if self.role in UNTRAINED_ROLES else self.setting

    def label(self, seed: int | None = None) -> str:
        tail = f"/seed{seed}" if seed is not None else ""
        return f"{self.dataset}/{self.directory}/{self.method}{tail}"


def role(method: str, exp: ExperimentConfig) -> str:
    if method == "sft":
        return "sft"
    if method in REFERENCE_ROWS:
        return "reference"
    if method in exp.evaluate.external:
        return EXTERNAL
    if method.startswith("oracle_bon_n"):
        return "oracle"
    if method.startswith("bon_n"):
        return "bon"
    if method == BLADE:
        return "blade"
    entry = exp.methods.get(method, {})
    return "variant" if entry.get("objective") == "blade" else "baseline"


def is_static(method: str, exp: ExperimentConfig) -> bool:
    """Static BoN alignment — the "static" side of the gradient-decay and static-bound figures and
    claims (docs/method.md §6.3, §6.4): a method entry whose objective says its target is static
    (``Objective.target_kind`` of the entry's options: BOND, vBoN, BLADE with ``estimator: static``,
    any new objective that declares ``target = "static"``). Rows that are no method entry are not."""
    if method not in exp.methods:
        return False
    # the entry is resolved (a plain dict, every option filled); validating it again gives the options
    entry = Method.from_entry(exp.methods[method], f"methods.{method}")
    return entry.objective_class.target_kind(entry.options) == "static"


def equal_cost(role: str, samples_per_user: Iterable[float] = ()) -> bool:
    """Whether a row is an equal-cost baseline of BLADE's single greedy list (the main claim, the
    main table's †): the roles in EQUAL_COST_ROLES, and an external row whose every seed's
    cost.json says ``samples_per_user == 1`` (``samples_per_user``: those values; none = unknown)."""
    if role in EQUAL_COST_ROLES:
        return True
    values = list(samples_per_user)
    return role == EXTERNAL and bool(values) and all(v == 1 for v in values)


def blade_n(exp: ExperimentConfig) -> int:
    """The N of BLADE's BoN target: the Oracle/BoN row the figures and claims compare with."""
    return int(exp.methods.get(BLADE, {}).get("n", 8))


def expected_rows(exp: ExperimentConfig, dataset: str, setting: str, split: str = "test",
                  bon_ns: Iterable[int] | None = None, aligned: bool = True) -> list[Row]:
    """Every row a (dataset, reward setting) table should hold, read from the config: SFT, the
    references and the external rows (reward setting ``none``; references have seed 0 only, external
    rows the seeds they have files for), each aligned method, and — on the splits that get them —
    the BoN and Oracle BoN rows for ``bon_ns`` (default: all N)."""
    seeds = tuple(exp.run.seeds)
    rows = [Row(dataset, setting, "sft", "sft", seeds)]
    rows += [Row(dataset, setting, r, "reference", (0,)) for r in exp.evaluate.references]
    rows += [Row(dataset, setting, name, EXTERNAL, ext.seeds_for(exp.run.seeds))
             for name, ext in exp.evaluate.external.items()]
    if aligned:
        rows += [Row(dataset, setting, m, role(m, exp), seeds) for m in exp.methods_for(setting)]
    if split in exp.evaluate.inference_splits:
        ns = exp.evaluate.bon_n if bon_ns is None else [n for n in bon_ns if n in exp.evaluate.bon_n]
        for kind in ("bon", "oracle_bon"):
            rows += [Row(dataset, setting, f"{kind}_n{n}", role(f"{kind}_n{n}", exp), seeds) for n in ns]
    return rows


def all_tables(exp: ExperimentConfig) -> list[tuple[str, str]]:
    """(dataset, reward setting) of every table, in config order."""
    return [(d, s) for d in exp.run.datasets for s in exp.run.rewards]


def eval_dir(results: str | Path, row: Row, seed: int, split: str, sample: bool = False) -> Path:
    out = Path(results) / "eval" / row.dataset / row.directory / row.method / f"seed{seed}" / split
    return out / "sample" if sample else out


def model_dir(results: str | Path, row: Row, seed: int) -> Path:
    return Path(results) / "models" / row.dataset / row.directory / row.method / f"seed{seed}"


def curve_path(results: str | Path, row: Row, seed: int) -> Path:
    return Path(results) / "curves" / row.dataset / row.directory / row.method / f"seed{seed}.parquet"


# --------------------------------------------------------------- what the Snakemake rules read
FIGURES = ("gradient_decay", "static_bound", "cost_quality", "training")


def analysis_split(exp: ExperimentConfig) -> str:
    """The split the tables read (``evaluate.table_split``): test unless a config drops it."""
    return exp.evaluate.table_split


def table_rows(exp: ExperimentConfig, roles: Iterable[str] | None = None, bon_ns: Iterable[int] | None = None,
               methods: Iterable[str] | None = None) -> list[Row]:
    """Expected rows of every table on the analysis split, optionally only some roles or methods."""
    roles, methods = (set(roles) if roles is not None else None), (set(methods) if methods is not None else None)
    return [row for dataset, setting in all_tables(exp)
            for row in expected_rows(exp, dataset, setting, analysis_split(exp), bon_ns=bon_ns)
            if (roles is None or row.role in roles) and (methods is None or row.method in methods)]


def eval_files(exp: ExperimentConfig, rows: Iterable[Row], name: str, sample: bool = False,
               results: str = "results") -> list[str]:
    """``name`` (metrics.json, per_user.parquet) of every (row, seed) on the analysis split; none for
    sampled decoding when the config draws no samples on that split."""
    split = analysis_split(exp)
    if sample and not (exp.evaluate.samples and split in exp.evaluate.inference_splits):
        return []
    return sorted({str(eval_dir(results, r, s, split, sample) / name) for r in rows for s in r.seeds})


def run_files(rows: Iterable[Row], name: str, results: str = "results") -> list[str]:
    return sorted({str(model_dir(results, r, s) / name) for r in rows for s in r.seeds})


def curve_files(rows: Iterable[Row], results: str = "results") -> list[str]:
    return sorted({str(curve_path(results, r, s)) for r in rows for s in r.seeds})


def analysis_outputs(tables: str = "results/tables", figures: str = "results/figures") -> list[str]:
    """Every table, figure and report page the analysis rules write (for ``rule all``)."""
    out = [f"{tables}/main.{ext}" for ext in ("csv", "md", "html", "tex")]
    out += [f"{tables}/{name}.{ext}" for name in ("listwise", "ablation", "claims", "vs_sft", "runtime")
            for ext in ("csv", "md", "html")]
    out += [f"{tables}/significance.csv", f"{tables}/provenance.md", f"{tables}/provenance.html"]
    return out + [f"{figures}/{name}.{ext}" for name in FIGURES for ext in ("png", "pdf")]
