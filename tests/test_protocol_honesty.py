"""Honesty of the protocol: nothing the DAG produces before the final test evaluation reads the
test split's targets.

The targets are read off Snakemake's own summary of the default target (rule all): every model
(weights at the best and at every evaluation step, diagnostics, valid curves), reference rollout
and valid-split evaluation — everything that precedes the test-split evaluation. Directory A
builds them on the tiny config as is. Directory B gets A's prepared data with every test-split
target replaced by another catalogue item and builds the same targets. Each file must be
byte-identical to A's, apart from wall-clock fields (see ``_is_timing``). The jobs that train a
row also score it on the test split, in the same process, after training and selection are done
(blade/eval/scoring.py); so B's SFT test files show the corruption is real: the same lists as A's, a
different score.

Scope: only the test split's targets change, after ``prepare``; a leak through the prepared
``items.parquet``/``stats.json`` (copied unchanged from A) is outside what this test can see.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
DATASET, SEED = "tiny", 0
# One reward setting keeps the DAG small; ndcg+fairness, because the fairness part also reads the
# prepared stats, so one more path into the data is exercised.
REWARD = "ndcg+fairness"
# An online and an offline method (the offline one reads the reference rollouts as pairs).
METHODS = ["blade", "dpo"]
# The split whose targets B corrupts; only its evaluation may differ between A and B.
TEST_SPLIT = "test"
# Machine- and run-specific by design: MLflow run ids, git commit and timestamps (run_info.json),
# measured decoding cost (cost.json). Neither feeds anything downstream.
NOT_COMPARED = {"run_info.json", "cost.json"}
# The files that carry wall-clock fields next to their results (see ``_is_timing``).
TIMED_FILES = {"diagnostics.parquet", "train_log.parquet", "metrics.json", "trainer_state.json"}


def _snakemake(workdir: Path, *targets: str, configs: list[Path]):
    # targets go first: --configfile takes every path that follows it
    return subprocess.run(
        [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2",
         *targets, "--configfile", *map(str, configs)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "BLADE_TRACKING": "off"},
    )


def _is_timing(name: str) -> bool:
    """Wall-clock measurements (`seconds`, `seconds/rollout`, `cost/seconds_per_user`, …): they
    depend on the machine's load, not on the data, so two runs of the same computation differ in
    them; every other field is compared exactly."""
    return any(part.startswith("seconds") for part in name.split("/"))


def _pre_test_outputs(results: Path) -> set[str]:
    """Relative paths of every model, rollout, curve and valid-split evaluation file."""
    found = [p for sub in ("models", "rollouts") for p in (results / sub).rglob("*") if p.is_file()]
    found += [p for p in (results / "eval").rglob("*") if p.is_file() and "valid" in p.relative_to(results / "eval").parts]
    return {str(p.relative_to(results)) for p in found if p.name not in NOT_COMPARED}


def _without_timing(value):
    """A JSON value with every timing field dropped, at any depth (a checkpoint's step log too)."""
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if not _is_timing(k)}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _assert_same(a: Path, b: Path, rel: str) -> str:
    """Byte equality, or — for a table or JSON file with timing fields — exact equality of
    everything else. Returns how the file was compared."""
    if a.read_bytes() == b.read_bytes():
        return "bytes"
    if a.suffix == ".parquet":
        fa, fb = pd.read_parquet(a), pd.read_parquet(b)
        timing = [c for c in fa.columns if _is_timing(c)]
        assert timing, f"{rel} differs between the clean and the corrupted-test run"
        pd.testing.assert_frame_equal(fa.drop(columns=timing), fb.drop(columns=timing), check_exact=True, obj=rel)
        return "frame without timing"
    if a.suffix == ".json":
        ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
        assert _without_timing(ja) != ja, f"{rel} differs between the clean and the corrupted-test run"
        assert _without_timing(ja) == _without_timing(jb), f"{rel} differs beyond its timing fields"
        return "json without timing"
    raise AssertionError(f"{rel} differs between the clean and the corrupted-test run")


def _corrupt_targets(test_file: Path, catalogue: Path) -> None:
    """Every target → the next catalogue item (cyclically): still a valid id, never the original.
    The file's mtime is kept so Snakemake sees nothing to redo."""
    stat = test_file.stat()
    ids = sorted(pd.read_parquet(catalogue)["item_id"].tolist())
    following = dict(zip(ids, ids[1:] + ids[:1]))
    frame = pd.read_parquet(test_file)
    frame["target"] = frame["target"].map(following).astype(frame["target"].dtype)
    frame.to_parquet(test_file, index=False)
    os.utime(test_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _dag_outputs(workdir: Path, configs: list[Path]) -> list[str]:
    """Every file the DAG's default target (rule all) produces, as Snakemake lists it (dry)."""
    done = _snakemake(workdir, "--summary", configs=configs)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("output_file\t"))
    return [line.split("\t")[0] for line in lines[header + 1:] if line.strip()]


def _before_test_evaluation(path: str) -> bool:
    """Models (weights, curves, diagnostics), reference rollouts and valid-split evaluations: what
    training and model selection produce. The test-split evaluation, and the analysis built on it
    (tables, figures, test-vs-step curves), come after."""
    parts = path.split("/")
    return parts[1] in ("models", "rollouts") or (parts[1] == "eval" and "valid" in parts)


@pytest.mark.slow
def test_outputs_before_the_test_evaluation_ignore_test_targets(tmp_path):
    # one snapshot of the config serves both directories
    configs = [tmp_path / "test_config.yaml", tmp_path / "smaller.yaml"]
    configs[0].write_text((ROOT / ".test" / "config.yaml").read_text())
    configs[1].write_text(yaml.safe_dump({"run": {"rewards": [REWARD], "methods": METHODS, "sweep": []}}))
    clean, corrupted = tmp_path / "A", tmp_path / "B"
    targets = [p for p in _dag_outputs(clean, configs) if _before_test_evaluation(p)]
    assert any("/valid/" in t for t in targets) and any(t.startswith("results/rollouts/") for t in targets), targets
    sft_test = f"results/eval/{DATASET}/none/sft/seed{SEED}/{TEST_SPLIT}"

    done = _snakemake(clean, *targets, f"{sft_test}/metrics.json", configs=configs)
    assert done.returncode == 0, done.stderr[-3000:]

    shutil.copytree(clean / "results" / "data", corrupted / "results" / "data")  # copy2: mtimes kept
    data = f"results/data/{DATASET}"
    _corrupt_targets(corrupted / data / "test.parquet", corrupted / data / "items.parquet")
    before = pd.read_parquet(clean / data / "test.parquet")
    after = pd.read_parquet(corrupted / data / "test.parquet")
    assert (before["target"] != after["target"]).all()
    pd.testing.assert_frame_equal(before.drop(columns="target"), after.drop(columns="target"))

    done = _snakemake(corrupted, *targets, configs=configs)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rule prepare" not in done.stdout + done.stderr, "prepare reran and overwrote the corrupted test split"
    pd.testing.assert_frame_equal(pd.read_parquet(corrupted / data / "test.parquet"), after)

    produced = _pre_test_outputs(clean / "results")
    assert produced == _pre_test_outputs(corrupted / "results")
    assert {t.removeprefix("results/") for t in targets if Path(t).name not in NOT_COMPARED} <= produced
    for method in METHODS:  # what the claims read: weights at every evaluation step, curves
        run = f"models/{DATASET}/{REWARD}/{method}/seed{SEED}"
        assert {f"{run}/best/model.safetensors", f"{run}/valid_curve.parquet", f"{run}/diagnostics.parquet"} <= produced
        assert any(p.startswith(f"{run}/snapshots/") and p.endswith(".safetensors") for p in produced), run
    how = {rel: _assert_same(clean / "results" / rel, corrupted / "results" / rel, rel) for rel in sorted(produced)}
    # the timing fields are the only exemption, and only in the files that carry them
    assert {Path(rel).name for rel, kind in how.items() if kind != "bytes"} <= TIMED_FILES, how

    # The corruption is visible where it should be: the SFT test lists (scored by the SFT job after
    # training) are the same — they never see a target — and their score is not.
    assert (clean / sft_test / "recs.jsonl").read_bytes() == (corrupted / sft_test / "recs.jsonl").read_bytes()
    scores = [json.loads((d / sft_test / "metrics.json").read_text())["ndcg@10"] for d in (clean, corrupted)]
    assert scores[0] != scores[1], scores
