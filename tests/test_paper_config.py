"""config/paper.yaml, the GPU-cluster configuration, without its GPUs, raw files or weights.

1. Its DAG resolves as written (a dry run): three amazon2018 categories, every method under every
   reward setting and seed, the pretrained LoRA policy with the title codec.
2. Its exact code path runs: the same file, with only the sizes, the file paths and the device
   overridden, runs end to end on raw-format review/metadata files and a small Qwen2 checkpoint that
   this test writes — amazon2018 source → LoRA SFT with title codes → rollouts → every method's
   objective → evaluation → analysis — and logs to the tracking URI the config names.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import random
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from blade.model.codec import BIGREC_TEMPLATE
from tests.conftest import ROOT
from tests.helpers import save_tiny_pretrained
from tests.test_workflow import snakemake

PAPER = ROOT / "config" / "paper.yaml"


def _workdir(tmp_path: Path) -> Path:
    """A scratch project directory: the configs (the Snakefile's default config is read from it)."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(ROOT / "config", work / "config")
    return work


def _job_counts(stdout: str) -> dict[str, int]:
    lines = stdout.split("Job stats:")[1].splitlines()[3:]
    counts = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def test_paper_config_dag_resolves(tmp_path):
    work = _workdir(tmp_path)
    done = snakemake(work, "-n", "--configfile", str(PAPER))
    assert done.returncode == 0, done.stderr[-3000:]
    paper = yaml.safe_load(PAPER.read_text())
    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    datasets, seeds = paper["run"]["datasets"], paper["run"]["seeds"]
    methods, rewards, sweep = default["run"]["methods"], default["run"]["rewards"], default["run"]["sweep"]
    counts = _job_counts(done.stdout)
    assert counts["prepare"] == len(datasets) == 3
    assert counts["sft"] == counts["rollout"] == len(datasets) * len(seeds)
    sweep_settings = 1 + len(default["run"].get("sweep_rewards", []))  # the first setting, and run.sweep_rewards
    assert counts["align"] == len(datasets) * len(seeds) * (len(methods) * len(rewards) + len(sweep) * sweep_settings)
    assert counts["score_reference"] == len(datasets) * len(paper["evaluate"]["references"])
    assert {paper["datasets"][d]["source"] for d in datasets} == {"amazon2018"}
    assert paper["policy"]["kind"] == "pretrained" and paper["policy"]["codec"] == "title" and paper["policy"]["lora"]
    assert paper["run"]["tracking_uri"].startswith("http")


def _raw_category(directory: Path, n_users: int = 40, n_items: int = 30, per_user: int = 7, seed: int = 0):
    """Raw Amazon 2018 files of one small category: every user reviews `per_user` items inside the
    time window (so the 5-core keeps them all), each item has a title of a few words."""
    rng = random.Random(seed)
    start = int(dt.datetime(2016, 1, 1, tzinfo=dt.UTC).timestamp())
    reviews = []
    for u in range(n_users):
        first = rng.randrange(n_items)
        for j in range(per_user):  # a walk over neighbouring items: sequences with structure
            reviews.append({"reviewerID": f"U{u}", "asin": f"B{(first + j) % n_items:03d}", "overall": 5.0,
                            "unixReviewTime": start + 86400 * (u + 40 * j)})
    words = ["Quest", "Legend", "Racing", "Puzzle", "Arena", "Saga", "Tactics", "Galaxy", "Dungeon", "Kart"]
    titles = {f"B{i:03d}": f"{words[i % 10]} {words[(i * 3 + 1) % 10]} {i}" for i in range(n_items)}
    meta = [{"asin": a, "title": t, "category": ["Video Games", "PC"]} for a, t in titles.items()]
    for name, records in (("reviews.json.gz", reviews), ("meta.json.gz", meta)):
        with gzip.open(directory / name, "wt", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
    return directory / "reviews.json.gz", directory / "meta.json.gz", list(titles.values())


@pytest.mark.slow
def test_paper_config_code_path_on_a_local_checkpoint(tmp_path):
    work = _workdir(tmp_path)
    reviews, meta, titles = _raw_category(tmp_path)
    model = save_tiny_pretrained(tmp_path / "qwen-tiny", titles + [BIGREC_TEMPLATE], vocab_size=600, layers=2,
                                 tie_embeddings=True)
    paper = yaml.safe_load(PAPER.read_text())
    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    every_method = default["run"]["methods"]
    tracking = tmp_path / "tracking.db"
    # Only sizes, paths and the device change; the source, the policy kind, codec and LoRA, every
    # method and the analysis are the paper config's own.
    override = {
        "run": {"datasets": ["amazon_video_games"], "seeds": [0], "rewards": ["ndcg"], "methods": every_method,
                "sweep": paper["run"].get("sweep", default["run"]["sweep"]),
                "tracking_uri": f"sqlite:///{tracking}"},
        "datasets": {"amazon_video_games": {"params": {"reviews": str(reviews), "metadata": str(meta)}}},
        "policy": {"path": str(model), "dtype": "float32", "device": "cpu"},
        "sft": {"epochs": 1, "batch_size": 16, "warmup_steps": 1},
        "rollout": {"m": 8, "max_contexts": 24, "batch_size": 32},
        "align": {"steps": 2, "contexts_per_step": 4, "group_size": 4, "eval_every": 2, "batch_size": 32},
        "evaluate": {"references": ["mostpop", "cooc"], "samples": 1, "bon_n": [1, 2], "selection_rows": 16,
                     "batch_size": 32},
        "methods": {"bond": {"objective": "bond", "anchor_samples": 2}},
    }
    (tmp_path / "override.yaml").write_text(yaml.safe_dump(override))
    done = snakemake(work, "--configfile", str(PAPER), str(tmp_path / "override.yaml"))
    assert done.returncode == 0, done.stderr[-4000:]
    res = work / "results"
    stats = json.loads((res / "data/amazon_video_games/stats.json").read_text())
    assert stats["source"] == "amazon2018" and stats["n_items"] == 30
    # LoRA: the SFT policy is an adapter over the base checkpoint, which stays untouched
    sft = res / "models/amazon_video_games/sft/seed0/best"
    adapter = json.loads((sft / "adapter_config.json").read_text())
    assert adapter["r"] == paper["policy"]["lora"]["rank"]
    assert set(adapter["target_modules"]) == set(paper["policy"]["lora"]["targets"])
    # the title codec: the recommended lists were decoded from titles into catalogue items
    for method in ["sft", *every_method, *override["run"]["sweep"]]:
        reward = "none" if method == "sft" else "ndcg"
        for split in paper["evaluate"]["splits"]:
            metrics = json.loads((res / f"eval/amazon_video_games/{reward}/{method}/seed0/{split}/metrics.json").read_text())
            assert 0 <= metrics["ndcg@10"] <= 1 and metrics["invalid_rate"] == 0, (method, split, metrics)
        diag = res / f"models/amazon_video_games/ndcg/{method}/seed0/diagnostics.parquet"
        assert method == "sft" or diag.is_file(), method
    # every job logged to the tracking URI of the config, none to the default store
    assert not (res / "mlflow.db").exists()
    with sqlite3.connect(tracking) as db:
        names = [r[0] for r in db.execute("select value from tags where key = 'mlflow.runName'")]
    assert sum(n.endswith("__align") for n in names) == len(every_method) + len(override["run"]["sweep"]), names
    assert (res / "tables/main.md").is_file() and "cooc" in (res / "tables/main.md").read_text()
