"""Honesty of the protocol: nothing the DAG produces before the final test evaluation reads the
test split's targets.

The tiny DAG runs once as is (A). A second directory (B) gets A's prepared data with every
test-split target replaced by another catalogue item, and builds every model, rollout, curve and
valid evaluation — everything but the test-split evaluation. Each of those files must be
byte-identical to A's, apart from wall-clock fields (see ``_is_timing``). Then the SFT test
evaluation runs in B, to show the corruption is real: the same lists, a different score.

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
# Produced only by the final evaluation; B must not build it before the comparison.
TEST_SPLIT = "test"
# Machine- and run-specific by design: MLflow run ids, git commit and timestamps (run_info.json),
# measured decoding cost (cost.json). Neither feeds anything downstream.
NOT_COMPARED = {"run_info.json", "cost.json"}


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


def _assert_same(a: Path, b: Path, rel: str) -> str:
    """Byte equality, or — for a table or JSON object with timing fields — exact equality of
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
        assert isinstance(ja, dict) and any(map(_is_timing, ja)), f"{rel} differs between the clean and the corrupted-test run"
        assert {k: v for k, v in ja.items() if not _is_timing(k)} == {k: v for k, v in jb.items() if not _is_timing(k)}, rel
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


@pytest.mark.slow
def test_outputs_before_the_test_evaluation_ignore_test_targets(tmp_path):
    configs = [ROOT / ".test" / "config.yaml", tmp_path / "one_reward.yaml"]
    configs[1].write_text(yaml.safe_dump({"run": {"rewards": [REWARD]}}))
    methods = yaml.safe_load(configs[0].read_text())["run"]["methods"]
    clean, corrupted = tmp_path / "A", tmp_path / "B"

    done = _snakemake(clean, configs=configs)
    assert done.returncode == 0, done.stderr[-3000:]

    shutil.copytree(clean / "results" / "data", corrupted / "results" / "data")  # copy2: mtimes kept
    data = f"results/data/{DATASET}"
    _corrupt_targets(corrupted / data / "test.parquet", corrupted / data / "items.parquet")
    before = pd.read_parquet(clean / data / "test.parquet")
    after = pd.read_parquet(corrupted / data / "test.parquet")
    assert (before["target"] != after["target"]).all()
    pd.testing.assert_frame_equal(before.drop(columns="target"), after.drop(columns="target"))

    runs = [f"results/models/{DATASET}/{REWARD}/{m}/seed{SEED}" for m in methods]
    rows = [f"none/{m}" for m in ("sft", "mostpop", "cooc")] + [f"{REWARD}/{m}" for m in methods]
    targets = [f"results/models/{DATASET}/sft/seed{SEED}/summary.json",
               f"results/rollouts/{DATASET}/{REWARD}/ref/seed{SEED}.parquet",
               *(f"{run}/{name}" for run in runs for name in ("summary.json", "diagnostics.parquet")),
               *(f"results/eval/{DATASET}/{row}/seed{SEED}/valid/metrics.json" for row in rows)]
    done = _snakemake(corrupted, *targets, configs=configs)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rule prepare" not in done.stdout + done.stderr, "prepare reran and overwrote the corrupted test split"
    assert not [p for p in (corrupted / "results" / "eval").rglob(TEST_SPLIT)], "B evaluated the test split"
    pd.testing.assert_frame_equal(pd.read_parquet(corrupted / data / "test.parquet"), after)

    produced = _pre_test_outputs(clean / "results")
    assert produced == _pre_test_outputs(corrupted / "results")
    expected = [*targets, f"results/models/{DATASET}/sft/seed{SEED}/best/model.safetensors",
                *(f"{run}/{name}" for run in runs for name in ("valid_curve.parquet", "best/model.safetensors"))]
    assert {t.removeprefix("results/") for t in expected} <= produced
    assert any("/snapshots/" in p and p.endswith(".safetensors") for p in produced), "no snapshot weights compared"
    how = {rel: _assert_same(clean / "results" / rel, corrupted / "results" / rel, rel) for rel in sorted(produced)}
    # the timing fields are the only exemption, and only where they exist
    assert {rel for rel, kind in how.items() if kind != "bytes"} <= {
        *(f"models/{DATASET}/{REWARD}/{m}/seed{SEED}/diagnostics.parquet" for m in methods),
        f"models/{DATASET}/sft/seed{SEED}/train_log.parquet",
        *(f"eval/{DATASET}/{row}/seed{SEED}/valid/metrics.json" for row in rows),
    }, how

    # The corruption is visible where it should be: the SFT test lists are the same (they never
    # see a target), their score is not.
    sft_test = f"results/eval/{DATASET}/none/sft/seed{SEED}/{TEST_SPLIT}"
    done = _snakemake(corrupted, f"{sft_test}/metrics.json", configs=configs)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (clean / sft_test / "recs.jsonl").read_bytes() == (corrupted / sft_test / "recs.jsonl").read_bytes()
    scores = [json.loads((d / sft_test / "metrics.json").read_text())["ndcg@10"] for d in (clean, corrupted)]
    assert scores[0] != scores[1], scores
