"""A small, readable snapshot of a finished run, for a repository or a paper's supplement.

    python -m analysis.publish --results results --out docs/results --command "snakemake … "

Copies the Markdown tables (main, list-wise, ablation, claims, every aligned row against SFT, runtime
with time and peak memory, provenance with the commit and the resolved config) and the PNG figures,
and writes ``significance.md``: for each dataset, reward setting and cut-off metric (and a list-wise
setting's own reward), BLADE against every other row (paired per-user test over the seeds,
Holm-corrected, with its MDE), from ``significance.csv``. Not the raw
``results/`` tree: per-user files, models and logs stay where the run wrote them. Files are written
atomically; ``command.txt`` records how the run was started.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.common import write_text

TABLES = ("main.md", "listwise.md", "ablation.md", "claims.md", "vs_sft.md", "runtime.md", "provenance.md")
SUMMARY_METRICS = ("ndcg@10", "recall@10", "own_reward")


def significance_summary(frame: pd.DataFrame, metrics: Sequence[str] = SUMMARY_METRICS) -> str:
    """One Markdown table per (dataset, reward setting, split): BLADE − row, its 95% CI, Cohen's d_z
    and the Holm-corrected paired p-values, for each row BLADE was tested against."""
    out = ["# Significance: BLADE against every row (paired per-user tests, Holm-corrected)", ""]
    frame = frame[frame["metric"].isin(metrics)]
    for (dataset, reward, split), part in frame.groupby(["dataset", "reward_setting", "split"], sort=False):
        out += [f"## {dataset} · {reward} · {split}", "",
                "| metric | row | BLADE | row mean | diff | 95% CI | d_z | MDE | p (t, Holm) | p (perm, Holm) | verdict |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in part.itertuples(index=False):
            verdict = ("BLADE better" if r.better == "blade" else "row better") if r.significant else "no significant difference"
            out.append(f"| {r.metric} | {r.baseline} | {r.blade_mean:.4f} | {r.baseline_mean:.4f} | {r.diff:+.4f} | "
                       f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}] | {r.d_z:+.3f} | {getattr(r, 'mde', float('nan')):.4f} | "
                       f"{r.p_ttest_holm:.2g} | "
                       f"{r.p_perm_holm:.2g} | {verdict} |")
        out.append("")
    return "\n".join(out)


def publish(results: Path, out: Path, command: str) -> list[Path]:
    tables, figures = results / "tables", results / "figures"
    missing = [str(tables / n) for n in TABLES if not (tables / n).is_file()]
    if missing or not (tables / "significance.csv").is_file():
        raise SystemExit(f"publish: {', '.join(missing + [str(tables / 'significance.csv')])} — run the analysis "
                         "first (`snakemake --cores all --config partial=True` analyses what exists)")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in TABLES:
        write_text(out / name, (tables / name).read_text())
        written.append(out / name)
    write_text(out / "significance.md", significance_summary(pd.read_csv(tables / "significance.csv")))
    write_text(out / "command.txt", command.strip() + "\n")
    written += [out / "significance.md", out / "command.txt"]
    (out / "figures").mkdir(exist_ok=True)
    for png in sorted(figures.glob("*.png")):
        tmp = out / "figures" / f".{png.name}.tmp"
        shutil.copyfile(png, tmp)
        tmp.replace(out / "figures" / png.name)
        written.append(out / "figures" / png.name)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results", help="the run's results/ directory")
    p.add_argument("--out", default="docs/results", help="where the snapshot goes")
    p.add_argument("--command", required=True, help="the command that produced the run (recorded as it is)")
    args = p.parse_args(argv)
    for path in publish(Path(args.results), Path(args.out), args.command):
        print(path)


if __name__ == "__main__":
    main()
