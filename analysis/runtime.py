"""Wall time and peak memory of every job → ``results/tables/runtime.{csv,md}``.

Reads the Snakemake ``benchmark:`` files, ``results/benchmarks/{rule}/…/{job}.tsv`` (one line per
job: ``s`` wall seconds, ``max_rss`` peak resident memory in MB, ``cpu_time`` CPU seconds; a job
benchmarked with ``repeat`` has several lines, averaged). ``runtime.csv`` has one line per job;
``runtime.md`` one per rule (jobs, total/mean/max wall seconds, peak RSS) and the total. The total
is the sum of job times — the DAG's own wall time is shorter where jobs ran in parallel. Rules
without a ``benchmark:`` (cheap ones) are not listed; jobs that ran after this one (the report)
cannot be.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.common import fmt, markdown, run_cli, write_csv, write_markdown
from blade.errors import DataError

COLUMNS = ["rule", "job", "seconds", "cpu_seconds", "max_rss_mb"]


def read_benchmarks(root: str | Path) -> pd.DataFrame:
    root = Path(root)
    lines = []
    for path in sorted(root.rglob("*.tsv")):
        rel = path.relative_to(root)
        try:
            table = pd.read_csv(path, sep="\t", na_values=["NA", "-"])
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise DataError(f"{path}: not a Snakemake benchmark file ({exc}); delete it and rerun its rule") from exc
        if "s" not in table:
            raise DataError(f"{path}: no 's' (wall seconds) column; columns are {list(table.columns)}")
        lines.append({"rule": rel.parts[0], "job": str(rel.with_suffix(""))[len(rel.parts[0]) + 1:] or rel.stem,
                      "seconds": float(table["s"].mean()),
                      "cpu_seconds": float(table["cpu_time"].mean()) if "cpu_time" in table else float("nan"),
                      "max_rss_mb": float(table["max_rss"].max()) if "max_rss" in table else float("nan")})
    return pd.DataFrame(lines, columns=COLUMNS)


def per_rule(jobs: pd.DataFrame) -> pd.DataFrame:
    return (jobs.groupby("rule", sort=True)
            .agg(jobs=("job", "size"), total_s=("seconds", "sum"), mean_s=("seconds", "mean"),
                 max_s=("seconds", "max"), peak_rss_mb=("max_rss_mb", "max"))
            .reset_index().sort_values("total_s", ascending=False))


def to_markdown(jobs: pd.DataFrame) -> str:
    rules = per_rule(jobs)
    body = [[r.rule, str(r.jobs), fmt(r.total_s, digits=1), fmt(r.mean_s, digits=1), fmt(r.max_s, digits=1),
             fmt(r.peak_rss_mb, digits=0)] for r in rules.itertuples()]
    body.append(["**all**", str(len(jobs)), fmt(jobs["seconds"].sum(), digits=1), "", "",
                 fmt(jobs["max_rss_mb"].max(), digits=0) if len(jobs) else "—"])
    return ("# Runtime per rule (Snakemake benchmarks)\n\n"
            + markdown(["rule", "jobs", "total s", "mean s", "max s", "peak RSS MB"], body)
            + "\nTotal = sum of job wall times; with parallel jobs the DAG finishes sooner. "
              "Per-job numbers: runtime.csv.\n")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmarks", default="results/benchmarks", help="folder of the benchmark .tsv files")
    p.add_argument("--out", default="results/tables/runtime", help="output stem: writes STEM.csv and STEM.md")
    args = p.parse_args(argv)
    jobs = read_benchmarks(args.benchmarks)
    write_csv(f"{args.out}.csv", jobs)
    write_markdown(f"{args.out}.md", to_markdown(jobs))
    print(f"runtime: {len(jobs)} jobs, {jobs['seconds'].sum():.0f} s in all")


if __name__ == "__main__":
    run_cli(main)
