"""The paper's figures (seaborn; PNG and PDF) → ``results/figures/``.

- ``gradient_decay``: the §3 diagnostics — weight spread, alignment-term gradient norm, saturated
  fraction, signal std — vs step, BLADE against static BoN alignment (BOND, vBoN,
  ``estimator: static``); one row per dataset × reward setting (docs/method.md §6.3);
- ``static_bound``: test NDCG@10 of the per-step snapshots (``results/curves``) vs step for BLADE
  and static alignment, with Oracle BoN@N of π_ref (N = BLADE's N) as a horizontal line (§6.4);
- ``cost_quality``: test NDCG@10 vs samples per user — the BoN@N and Oracle BoN@N curves over
  π_ref, and every aligned method's (and SFT's) sampled single-sample quality as a point at its
  cost, 1 sample (points at x = 1 are spread sideways a little so they do not hide each other) (§6.5);
  an external row (``evaluate.external``; its greedy lists, the only ones it has) at the samples per
  user of its cost.json — without one it is not placed on the x axis at all: a marker at the right
  edge of the panel, at its quality, reads "NAME: cost unknown" (a cost is never guessed);
- ``training``: training reward (mean over rollouts) and k3 KL(π_θ ‖ π_ref) vs step, every method.
Lines are the mean over seeds with a ±1 sd band; per-step diagnostics are smoothed per seed by a
centred rolling mean over 5% of the steps (the raw values are in diagnostics.parquet). A panel with
no data says so; the runs that were missing are printed (and listed in claims.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on the machines the DAG runs on
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis.common import (BLADE, EXTERNAL, all_tables, blade_n, collect_metrics, curve_path,  # noqa: E402
                             expected_rows, is_static, list_k, load_experiment, missing_note, parser,
                             read_diagnostics, run_cli)
from analysis.rows import FIGURES  # noqa: E402

DECAY = ["weight_spread", "grad_norm_align", "saturated_frac", "signal_std"]
TRAINING = ["reward_mean", "ref_bon_reward", "kl"]
TITLES = {"weight_spread": "weight spread Σ|w−1/G|", "grad_norm_align": "‖∇ alignment term‖",
          "saturated_frac": "saturated fraction (F ≥ 0.99)", "signal_std": "signal std of (N−1)·log F",
          "reward_mean": "training reward (mean)",
          "ref_bon_reward": "BoN@N of π_ref on the step's contexts\n(the static target's reward)", "kl": "KL(π_θ ‖ π_ref), k3"}
SMOOTH = 0.05


def _aligned(exp, static_only: bool) -> list[str]:
    return [m for m in exp.aligned if not static_only or m == BLADE or is_static(m, exp)]


def palette(exp) -> dict[str, tuple]:
    """One colour per row name, the same in every figure (BLADE always the first colour)."""
    names = [BLADE, *[m for m in exp.aligned if m != BLADE], "sft", *exp.evaluate.external]
    colours = sns.color_palette("tab10", max(10, len(names)))
    return {name: colours[i % len(colours)] for i, name in enumerate(names)}


def smooth(frame: pd.DataFrame, column: str, keys: Sequence[str]) -> pd.DataFrame:
    """Centred rolling mean of ``column`` over 5% of each series' steps (per seed)."""
    def one(group):
        window = max(1, int(round(SMOOTH * len(group))))
        return group.sort_values("step").assign(**{column: lambda g: g[column].rolling(window, center=True,
                                                                                       min_periods=1).mean()})
    if not len(frame):
        return frame
    return frame.groupby(list(keys), group_keys=False, sort=False)[frame.columns.tolist()].apply(one)


def diagnostics_data(results, exp, metrics: Sequence[str], static_only: bool, missing: list[str]) -> pd.DataFrame:
    """Long frame: dataset, setting, method, seed, step, metric, value (smoothed)."""
    parts = []
    for dataset, setting in all_tables(exp):
        for row in expected_rows(exp, dataset, setting, bon_ns=[]):
            if row.method not in _aligned(exp, static_only):
                continue
            diag = read_diagnostics(results, row, missing)
            for metric in metrics:
                if metric in diag and len(diag):
                    part = diag[["seed", "step", metric]].rename(columns={metric: "value"})
                    parts.append(part.assign(dataset=dataset, setting=setting, method=row.method, metric=metric))
    if not parts:
        return pd.DataFrame(columns=["dataset", "setting", "method", "seed", "step", "metric", "value"])
    return smooth(pd.concat(parts, ignore_index=True), "value", ["dataset", "setting", "method", "metric", "seed"])


def curve_data(results, exp, metric: str, missing: list[str]) -> pd.DataFrame:
    """Long frame of the snapshot test curves: dataset, setting, method, seed, step, value."""
    parts = []
    for dataset, setting in all_tables(exp):
        for row in expected_rows(exp, dataset, setting, bon_ns=[]):
            if row.method not in _aligned(exp, static_only=True):
                continue
            for seed in row.seeds:
                path = curve_path(results, row, seed)
                if not path.is_file():
                    missing.append(row.label(seed) + "/curve")
                    continue
                curve = pd.read_parquet(path)
                if metric in curve:
                    parts.append(curve[["step", metric]].rename(columns={metric: "value"}).assign(
                        dataset=dataset, setting=setting, method=row.method, seed=seed))
    if not parts:
        return pd.DataFrame(columns=["dataset", "setting", "method", "seed", "step", "value"])
    return pd.concat(parts, ignore_index=True)


def row_means(results, exp, dataset: str, setting: str, methods: Sequence[str], metric: str, split: str,
              sample: bool, missing: list[str]) -> pd.DataFrame:
    """Per method: mean and sd over seeds of ``metric`` and of the cost in samples per user."""
    rows = [r for r in expected_rows(exp, dataset, setting, split) if r.method in methods]
    per_seed = collect_metrics(results, rows, split, sample, missing)
    if not len(per_seed) or metric not in per_seed:
        return pd.DataFrame(columns=["method", "mean", "sd", "samples"])
    if "cost/samples_per_user" not in per_seed:
        per_seed["cost/samples_per_user"] = np.nan
    per_seed["samples"] = per_seed["cost/samples_per_user"].fillna(per_seed["method"].map(_n_of))
    return per_seed.groupby("method", sort=False).agg(mean=(metric, "mean"), sd=(metric, "std"),
                                                      samples=("samples", "mean")).reset_index()


def external_points(results, exp, dataset: str, setting: str, metric: str, split: str,
                    missing: list[str]) -> pd.DataFrame:
    """Per external row: mean and sd over seeds of ``metric`` on its (greedy) lists, and its samples
    per user from cost.json — NaN, the cost unknown, unless every seed found has one."""
    rows = [r for r in expected_rows(exp, dataset, setting, split) if r.role == EXTERNAL]
    per_seed = collect_metrics(results, rows, split, missing=missing)
    if not len(per_seed) or metric not in per_seed:
        return pd.DataFrame(columns=["method", "mean", "sd", "samples"])
    cost = per_seed["cost/samples_per_user"] if "cost/samples_per_user" in per_seed else np.nan
    return per_seed.assign(samples=cost).groupby("method", sort=False).agg(
        mean=(metric, "mean"), sd=(metric, "std"),
        samples=("samples", lambda s: s.mean() if s.notna().all() else np.nan)).reset_index()


def _external(ax, points: pd.DataFrame, colours: dict) -> bool:
    """Draw the external rows: at their cost, or — cost unknown — at the right edge, named so;
    returns whether one was placed on the x axis."""
    placed = False
    for point in points.itertuples():
        colour = colours.get(point.method, "0.5")
        if np.isfinite(point.samples):
            ax.errorbar([point.samples], [point.mean], yerr=[0 if math.isnan(point.sd) else point.sd], fmt="*",
                        markersize=9, capsize=2, color=colour, label=f"{point.method} (external)")
            placed = True
            continue
        edge = ax.get_yaxis_transform()  # x in axes units, y in data: off the cost axis, at its quality
        ax.plot([1.0], [point.mean], marker="<", markersize=8, color=colour, transform=edge, clip_on=False, ls="",
                label=f"{point.method} (external, cost unknown)")
        ax.annotate(f"{point.method}: cost unknown", xy=(1.0, point.mean), xycoords=edge, xytext=(-8, 0),
                    textcoords="offset points", ha="right", va="center", fontsize=7, color=colour)
    return placed


def sampled(exp, split: str) -> bool:
    """Whether the config draws sampled-decoding lists on ``split`` (evaluate.samples, inference_splits)."""
    return bool(exp.evaluate.samples) and split in exp.evaluate.inference_splits


def _n_of(method: str) -> float:
    return float(method.rsplit("_n", 1)[-1]) if "bon_n" in method else 1.0


def _grid(nrows: int, ncols: int, width: float = 3.6, height: float = 2.8):
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, axes


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.3", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    handles, labels = [], []
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
        if ax.get_legend():
            ax.get_legend().remove()
    fig.tight_layout()
    if handles:  # one legend for the whole figure, right of the panels (bbox "tight" keeps it in the file)
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=120, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None})  # same data → same bytes
    plt.close(fig)
    return paths


def _lines(ax, data: pd.DataFrame, colours: dict, y: str = "value") -> None:
    sns.lineplot(data=data, x="step", y=y, hue="method", errorbar="sd", ax=ax, palette=colours,
                 hue_order=[m for m in colours if m in set(data["method"])])


def gradient_decay(results, exp, out: Path, missing: list[str]) -> list[Path]:
    return _diagnostic_figure(results, exp, out, "gradient_decay", DECAY, True, missing)


def training(results, exp, out: Path, missing: list[str]) -> list[Path]:
    return _diagnostic_figure(results, exp, out, "training", TRAINING, False, missing)


def _diagnostic_figure(results, exp, out, name, metrics, static_only, missing) -> list[Path]:
    data = diagnostics_data(results, exp, metrics, static_only, missing)
    tables = all_tables(exp)
    fig, axes = _grid(len(tables), len(metrics))
    colours = palette(exp)
    for i, (dataset, setting) in enumerate(tables):
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            sub = data[(data["dataset"] == dataset) & (data["setting"] == setting) & (data["metric"] == metric)]
            if not len(sub):
                _empty(ax, f"no {metric} logged")
            else:
                _lines(ax, sub, colours)
            if metric == "saturated_frac" and (note := saturation_note(exp)):
                ax.text(0.02, 0.98, note, transform=ax.transAxes, fontsize=7, va="top", color="0.3", wrap=True)
            ax.set_title(f"{dataset} · {setting}\n{TITLES.get(metric, metric)}", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("")
    return _save(fig, out, name)


def saturation_note(exp) -> str:
    """What the saturated-fraction panel cannot show: under the ``dp`` estimator BLADE's F of a
    group's best rollout is capped at (κ0 + G − ½)/(κ0 + G) (blade/align/estimators.py); a cap
    below the 0.99 threshold makes BLADE's saturated fraction 0 by construction."""
    from blade.align.estimators import dp_saturation_cap

    entry = exp.methods.get(BLADE, {})
    if entry.get("estimator", "dp") != "dp" or "kappa0" not in entry:
        return ""
    cap = dp_saturation_cap(float(entry["kappa0"]), exp.align.group_size)
    if cap >= 0.99:
        return ""
    return (f"BLADE (dp, κ0 {entry['kappa0']:g}, G {exp.align.group_size}): F ≤ {cap:.3f} < 0.99,\n"
            "so its saturated fraction is 0 by construction")


def static_bound(results, exp, out: Path, missing: list[str], split: str = "test") -> list[Path]:
    metric = f"ndcg@{list_k(exp)}"
    data = curve_data(results, exp, metric, missing)
    oracle = f"oracle_bon_n{blade_n(exp)}"
    datasets, settings = exp.run.datasets, exp.run.rewards
    fig, axes = _grid(len(datasets), len(settings), width=4.2, height=3.2)
    colours = palette(exp)
    for i, dataset in enumerate(datasets):
        for j, setting in enumerate(settings):
            ax = axes[i, j]
            sub = data[(data["dataset"] == dataset) & (data["setting"] == setting)]
            if len(sub):
                _lines(ax, sub, colours)
            line = row_means(results, exp, dataset, setting, [oracle], metric, split, False, missing)
            if len(line):
                ax.axhline(line["mean"].iloc[0], color="crimson", ls="--", lw=1.2,
                           label=f"Oracle BoN@{blade_n(exp)} of π_ref")
            if not len(sub) and not len(line):
                _empty(ax, "no snapshot curves and no Oracle BoN row")
            ax.set_title(f"{dataset} · {setting}", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel(f"test {metric} (greedy)")
    return _save(fig, out, "static_bound")


def cost_quality(results, exp, out: Path, missing: list[str], split: str = "test") -> list[Path]:
    metric = f"ndcg@{list_k(exp)}"
    datasets, settings = exp.run.datasets, exp.run.rewards
    fig, axes = _grid(len(datasets), len(settings), width=4.2, height=3.2)
    colours = palette(exp)
    ns = sorted(exp.evaluate.bon_n)
    for i, dataset in enumerate(datasets):
        for j, setting in enumerate(settings):
            ax = axes[i, j]
            drawn = False
            for kind, style in (("bon", dict(color="0.2", marker="o", ls="-", label="BoN@N of π_ref")),
                                ("oracle_bon", dict(color="crimson", marker="s", ls="--",
                                                    label="Oracle BoN@N of π_ref"))):
                curve = row_means(results, exp, dataset, setting, [f"{kind}_n{n}" for n in ns], metric, split, False,
                                  missing)
                if len(curve):
                    curve = curve.sort_values("samples")
                    ax.errorbar(curve["samples"], curve["mean"], yerr=curve["sd"].fillna(0), capsize=2, **style)
                    drawn = True
            points = (row_means(results, exp, dataset, setting, ["sft", *exp.methods_for(setting)], metric, split,
                                True, missing) if sampled(exp, split) else pd.DataFrame(columns=["method", "mean", "sd"]))
            for k, point in enumerate(points.itertuples()):
                x = point.samples * 2 ** (0.06 * (k - (len(points) - 1) / 2))  # sideways spread on the log2 axis
                ax.errorbar([x], [point.mean], yerr=[0 if math.isnan(point.sd) else point.sd], fmt="D", capsize=2,
                            color=colours.get(point.method, "0.5"), label=f"{point.method} (1 sample)")
                drawn = True
            external = external_points(results, exp, dataset, setting, metric, split, missing)
            drawn = _external(ax, external, colours) or drawn
            if not drawn and not len(external):
                _empty(ax, "no BoN rows and no sampled decoding")
            elif drawn:
                ax.set_xscale("log", base=2)
            ax.set_title(f"{dataset} · {setting}", fontsize=9)
            ax.set_xlabel("samples per user")
            ax.set_ylabel(f"test {metric}")
    return _save(fig, out, "cost_quality")


def figures(results, exp, out: str | Path, which: Sequence[str] = FIGURES) -> tuple[list[Path], list[str]]:
    sns.set_theme(style="whitegrid", context="paper")
    makers = {"gradient_decay": gradient_decay, "static_bound": static_bound, "cost_quality": cost_quality,
              "training": training}
    missing: list[str] = []
    paths = []
    for name in which:
        paths += makers[name](results, exp, Path(out), missing)
    return paths, sorted(set(missing))


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--out", default="results/figures", help="folder for NAME.png and NAME.pdf")
    p.add_argument("--which", nargs="+", default=list(FIGURES), choices=FIGURES, help="figures to draw (default: all)")
    args = p.parse_args(argv)
    exp = load_experiment(args)
    paths, missing = figures(args.results, exp, args.out, args.which)
    print(f"wrote {len(paths)} files under {args.out}. {missing_note(missing)}")


if __name__ == "__main__":
    run_cli(main)
