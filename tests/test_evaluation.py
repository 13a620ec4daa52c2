"""Recommendation files and ``evaluate``: the public recs format, its error messages, and per-user
Recall/NDCG checked against values worked out by hand; ``blade evaluate`` as a subprocess, its
MGU/DGU against an independent IFairLRS pooled computation, and ILD against the diversity reward."""

import json
import shutil
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from blade.data import PreparedData
from blade.data import load_prepared
from blade.errors import DataError
from blade.eval.recs import read_recs, write_recs
from blade.eval.scoring import evaluate
from blade.metrics import build_catalogue
from blade.rewards import ListReward, RewardConfig
from tests.conftest import ROOT
from tests.helpers import tiny_dataset

UNKNOWN = 99_999  # not an item id of the tiny catalogue (ids 0..39)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("evaluation") / "data")


def _write(path, lines):
    path.write_text("".join(line if isinstance(line, str) else json.dumps(line) + "\n" for line in lines))
    return path


# ---------------------------------------------------------------- the file format
def test_write_read_round_trip(tmp_path):
    lists = np.array([[3, 1, 4, -1], [1, 5, 9, 2], [-1, -1, -1, -1]])
    write_recs(tmp_path / "recs.jsonl", lists)
    lines = (tmp_path / "recs.jsonl").read_text().splitlines()
    assert json.loads(lines[1]) == {"row": 1, "items": [1, 5, 9, 2]}  # the public format, line per row
    np.testing.assert_array_equal(read_recs(tmp_path / "recs.jsonl", 3)[0], lists)


def test_read_accepts_any_line_order_blank_lines_and_ragged_lists(tmp_path):
    path = _write(tmp_path / "recs.jsonl", [{"row": 2, "items": [7]}, "\n", {"row": 0, "items": [4, 5, 6]},
                                            {"row": 1, "items": [], "score": "extra keys are ignored"}])
    np.testing.assert_array_equal(read_recs(path, 3)[0], [[4, 5, 6], [-1, -1, -1], [7, -1, -1]])


GOOD = {"row": 0, "items": [1, 2]}


@pytest.mark.parametrize("lines, where, expected", [
    ([GOOD, '{"row": 1, "items": [3\n'], "line 2", ["not valid JSON", '"row"', '"items"']),
    (["[1, [2, 3]]\n"], "line 1", ["expected a JSON object", '"row"']),
    ([{"items": [1]}], "line 1", ["missing key 'row'", "each line must be"]),
    ([{"row": 0}], "line 1", ["missing key 'items'"]),
    ([{"row": "0", "items": [1]}], "line 1", ['"row" must be an integer row number of test (3 rows, numbered 0..2)']),
    ([{"row": True, "items": [1]}], "line 1", ['"row" must be an integer']),
    ([{"row": 1.0, "items": [1]}], "line 1", ['"row" must be an integer']),
    ([GOOD, {"row": 3, "items": [1]}], "line 2", ["row 3 is not a row of test (3 rows, numbered 0..2)", "0-based"]),
    ([{"row": -1, "items": [1]}], "line 1", ["row -1 is not a row of test"]),
    ([GOOD, {"row": 1, "items": []}, {"row": 0, "items": [3]}], "line 3",
     ["row 0 appears twice (first at line 1)", "exactly one line per row"]),
    ([{"row": 0, "items": 5}], "line 1", ['"items" must be a list of integer item ids', "items.parquet"]),
    ([{"row": 0, "items": ["12"]}], "line 1", ['"items" must be a list of integer item ids']),
    ([{"row": 0, "items": [1.5]}], "line 1", ['"items" must be a list of integer item ids']),
    ([{"row": 0, "items": [None]}], "line 1", ['"items" must be a list of integer item ids']),
    ([{"row": 0, "items": [False]}], "line 1", ['"items" must be a list of integer item ids']),
    ([{"row": 0, "items": [2**70]}], "line 1", ["does not fit in 64 bits"]),
    ([{"row": 1, "items": [1]}], "", ["2 of the 3 rows of test have no line (rows 0, 2)", '"items": []']),
    ([], "", ["is empty", "for each of the 3 rows of test"]),
    (["\n", "  \n"], "", ["is empty"]),
])
def test_malformed_files_name_file_line_and_fix(tmp_path, lines, where, expected):
    path = _write(tmp_path / "recs.jsonl", lines)
    with pytest.raises(DataError) as err:
        read_recs(path, 3, "test")
    message = str(err.value)
    assert str(path) in message and where in message, message
    for part in expected:
        assert part in message, message


def test_missing_or_binary_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_recs(tmp_path / "nope.jsonl", 3)
    (tmp_path / "bin.jsonl").write_bytes(b'{"row": 0, "items": [1]}\n\xff\xfe\x00')
    with pytest.raises(DataError, match="is not UTF-8 text"):
        read_recs(tmp_path / "bin.jsonl", 3)


# ---------------------------------------------------------------- metrics, by hand
def _hand_lists(test: pd.DataFrame, item_ids: list[int]):
    """Lists of 5 for every test row, with the target at rank 1 (r % 3 == 0), rank 3 (r % 3 == 1)
    or absent (r % 3 == 2), plus the mistakes a recommender can make, and the expected metrics."""
    lines, expect = [], []
    for r, target in enumerate(test["target"]):
        others = [i for i in item_ids if i != target]
        others = others[r % len(others):] + others[: r % len(others)]  # vary the filler items
        fill = iter(others)
        if r % 3 == 0:
            items = [target] + [next(fill) for _ in range(4)]
        elif r % 3 == 1:
            items = [next(fill), next(fill), target, next(fill), next(fill)]
        else:
            items = [next(fill) for _ in range(5)]
        invalid = 0
        if r % 10 == 1:  # an unknown id is a wasted slot: the target keeps its rank (3 stays 3)
            items[1 if r % 3 == 0 else 0], invalid = UNKNOWN, 1
        elif r % 10 == 4:  # a repeat is invalid; the target (rank 3) is unaffected
            items[3], invalid = items[1], 1
        elif r % 10 == 5:  # a short list: its empty 5th slot is a miss and invalid
            items, invalid = items[:4], 1
        elif r % 10 == 8:  # negative and huge ids are unknown ids, not crashes
            items[3:5], invalid = [-7, 10**15], 2
        elif r % 10 == 0:  # items beyond K = 5 are not scored (and do not count as invalid)
            items = items + [UNKNOWN, UNKNOWN, target]
        lines.append({"row": r, "items": items})
        rank = {0: 1, 1: 3, 2: None}[r % 3]
        expect.append({"recall@1": float(rank == 1), "recall@3": float(rank is not None),
                       "recall@5": float(rank is not None),
                       # NDCG = 1 / log2(rank + 1): 1 at rank 1, 1/log2(4) = 0.5 at rank 3
                       "ndcg@1": float(rank == 1), "ndcg@3": {1: 1.0, 3: 0.5, None: 0.0}[rank],
                       "ndcg@5": {1: 1.0, 3: 0.5, None: 0.0}[rank], "invalid_rate": invalid / 5})
    return lines, pd.DataFrame(expect)


def test_evaluate_matches_hand_computed_metrics(tmp_path, data):
    test = pd.read_parquet(data / "test.parquet")
    items = pd.read_parquet(data / "items.parquet")
    assert UNKNOWN not in set(items["item_id"])
    lines, expect = _hand_lists(test, items["item_id"].tolist())
    rng = np.random.default_rng(0)
    recs = _write(tmp_path / "recs.jsonl", [lines[i] for i in rng.permutation(len(lines))])  # any order
    summary = evaluate(recs, PreparedData.load(data), "test", tmp_path / "eval", ks=(1, 3, 5))

    per_user = pd.read_parquet(tmp_path / "eval" / "per_user.parquet")
    assert per_user["row"].tolist() == list(range(len(test)))
    assert per_user["context_id"].tolist() == test["context_id"].tolist()
    for col in expect.columns:
        np.testing.assert_allclose(per_user[col].to_numpy(), expect[col].to_numpy(), err_msg=col)

    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics == pytest.approx(summary)
    assert metrics["split"] == "test" and metrics["n_rows"] == len(test)
    # ild@1 has nothing to measure (a 1-item list has no pairs): left out, never written as NaN
    assert per_user["ild@1"].isna().all() and "ild@1" not in metrics
    for col in per_user.columns.drop(["row", "context_id", "ild@1"]):  # every per-user column, fairness included
        assert metrics[col] == pytest.approx(np.nanmean(per_user[col])), col
    n = len(test)
    rows = np.arange(n)
    assert metrics["recall@1"] == pytest.approx(np.mean(rows % 3 == 0))
    assert metrics["ndcg@5"] == pytest.approx((np.sum(rows % 3 == 0) + 0.5 * np.sum(rows % 3 == 1)) / n)
    assert metrics["invalid_rate"] == pytest.approx(expect["invalid_rate"].mean())
    assert metrics["invalid_rate"] > 0
    assert {"gini@5", "coverage@5", "entropy@5"} <= set(metrics)  # catalogue-level numbers beside the means


def test_evaluate_an_all_unknown_file_scores_zero_without_crashing(tmp_path, data):
    n = len(pd.read_parquet(data / "valid.parquet"))
    recs = _write(tmp_path / "recs.jsonl", [{"row": r, "items": [UNKNOWN + r, -5]} for r in range(n)])
    summary = evaluate(recs, PreparedData.load(data), "valid", tmp_path / "eval", ks=(2,))
    assert summary["recall@2"] == 0 and summary["ndcg@2"] == 0
    assert summary["invalid_rate"] == 1.0
    assert summary["coverage@2"] == 0


def test_sampled_recs_average_every_metric_over_the_samples(tmp_path, data):
    """Sampled decoding (S lists per row): each per-user metric is the mean over the row's S lists,
    and each summary number the mean over samples — checked against S separate evaluations."""
    test = pd.read_parquet(data / "test.parquet")
    ids = pd.read_parquet(data / "items.parquet")["item_id"].to_numpy()
    rng = np.random.default_rng(0)
    samples = np.stack([np.stack([rng.choice(ids, 5, replace=False) for _ in range(len(test))]) for _ in range(3)])
    samples[1, :, 0] = test["target"].to_numpy()  # sample 1 hits every target at rank 1
    write_recs(tmp_path / "s.jsonl", samples)
    assert json.loads((tmp_path / "s.jsonl").read_text().splitlines()[len(test)])["sample"] == 1
    together = evaluate(tmp_path / "s.jsonl", PreparedData.load(data), "test", tmp_path / "all", ks=(5,))
    alone = []
    for s in range(3):
        write_recs(tmp_path / f"{s}.jsonl", samples[s])
        alone.append(evaluate(tmp_path / f"{s}.jsonl", PreparedData.load(data), "test", tmp_path / f"e{s}", ks=(5,)))
    for key in ("recall@5", "ndcg@5", "coverage@5", "mgu_pop@5", "ild@5"):
        assert together[key] == pytest.approx(np.mean([a[key] for a in alone]), rel=1e-12), key
    assert together["samples_per_row"] == 3 and together["recall@5"] >= 1 / 3
    per_user = pd.read_parquet(tmp_path / "all" / "per_user.parquet")
    singles = [pd.read_parquet(tmp_path / f"e{s}" / "per_user.parquet") for s in range(3)]
    np.testing.assert_allclose(per_user["ndcg@5"], sum(f["ndcg@5"] for f in singles) / 3)


def test_sampled_recs_must_cover_every_row_in_every_sample(tmp_path):
    path = _write(tmp_path / "r.jsonl", [{"row": 0, "sample": 0, "items": [1]}, {"row": 1, "sample": 0, "items": [2]},
                                         {"row": 0, "sample": 1, "items": [3]}])
    with pytest.raises(DataError, match=r"1 of the 2 rows of split \(sample 1\) have no line \(rows 1\)"):
        read_recs(path, 2)
    bad = _write(tmp_path / "b.jsonl", [{"row": 0, "sample": -1, "items": [1]}])
    with pytest.raises(DataError, match="\"sample\" must be a non-negative integer"):
        read_recs(bad, 1)


def test_evaluate_rejects_bad_cutoffs_and_split(tmp_path, data):
    recs = tmp_path / "recs.jsonl"
    write_recs(recs, np.zeros((len(pd.read_parquet(data / "test.parquet")), 5), dtype=int))
    with pytest.raises(ValueError, match="positive integers"):
        evaluate(recs, PreparedData.load(data), "test", tmp_path / "eval", ks=(0, 5))
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        evaluate(recs, PreparedData.load(data), "dev", tmp_path / "eval", ks=(5,))


# ---------------------------------------------------------------- the command line
def _cli_evaluate(recs, data, out):
    env = {**os.environ, "BLADE_TRACKING": "off"}
    return subprocess.run([sys.executable, "-m", "blade.cli", "evaluate", "--recs", str(recs), "--data", str(data),
                           "--split", "test", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, env=env)


@pytest.mark.slow
def test_cli_evaluate_bad_file_exits_2_with_one_clear_line_and_good_file_exits_0(tmp_path, data):
    n = len(pd.read_parquet(data / "test.parquet"))
    bad = _write(tmp_path / "bad.jsonl", [{"row": 0, "items": [1]}, '{"row": 1, "items": [1,\n'])
    proc = _cli_evaluate(bad, data, tmp_path / "bad_eval")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("blade evaluate: error:") and f"{bad} line 2: not valid JSON" in proc.stderr
    assert not (tmp_path / "bad_eval" / "metrics.json").exists()

    good = tmp_path / "good.jsonl"
    write_recs(good, np.tile(np.arange(20), (n, 1)))
    proc = _cli_evaluate(good, data, tmp_path / "good_eval")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "recall@10=" in proc.stdout and "invalid_rate=0.0000" in proc.stdout
    metrics = json.loads((tmp_path / "good_eval" / "metrics.json").read_text())
    assert metrics["invalid_rate"] == 0 and math.isfinite(metrics["ndcg@20"])
    assert (tmp_path / "good_eval" / "per_user.parquet").is_file()

    # one id outside the catalogue in n rows × 20 slots: a rate that rounds to 0.0000, so the count is printed
    lists = np.tile(np.arange(20), (n, 1))
    lists[3, 7] = 10**9
    write_recs(tmp_path / "one_bad.jsonl", lists)
    proc = _cli_evaluate(tmp_path / "one_bad.jsonl", data, tmp_path / "one_bad_eval")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "one_bad_eval" / "metrics.json").read_text())
    assert metrics["invalid_rate"] == pytest.approx(1 / (n * 20))
    assert "(1 invalid slots)" in proc.stdout, proc.stdout


def test_damaged_prepared_file_names_the_file_and_the_rebuild_command(tmp_path, data):
    """A truncated split file stops with its path and the command that rebuilds it, not pyarrow's traceback."""
    from blade.errors import DataError

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    test_file = copy / "test.parquet"
    test_file.write_bytes(test_file.read_bytes()[:100])
    with pytest.raises(DataError, match=rf"{test_file} is damaged and cannot be read as Parquet.*snakemake --cores all "
                                        rf"--forcerun prepare {copy}/stats.json"):
        PreparedData.load(copy)
    (copy / "valid.parquet").unlink()
    with pytest.raises(DataError, match=rf"{copy / 'valid.parquet'} is missing"):
        PreparedData.load(copy)
    proc = _cli_evaluate(tmp_path / "none.jsonl", copy, tmp_path / "e")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "rebuild it" in proc.stderr, proc.stderr


# ---------------------------------------------------------------- fairness and diversity, crafted
# Twelve items (ids 100..111, no genres) in popularity groups 0..2 of n_groups = 4: the tail group 3
# is empty, as it is when few items have no train interactions. Train rows give the co-occurrence.
CRAFT_IDS = list(range(100, 112))
CRAFT_GROUP = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2]
CRAFT_TRAIN = [([100], 101), ([100], 101), ([100], 102), ([101], 103), ([102], 103), ([103], 104),
               ([105, 104], 106), ([106], 107), ([107], 100), ([101, 108], 109), ([109], 100)]
CRAFT_TEST = [([100, 101], 103), ([104], 105), ([102, 103, 108], 100), ([110], 111)]
CRAFT_RECS = [  # K = 10; row 3 has a repeat, an unknown id and two empty slots
    [100, 101, 102, 103, 104, 105, 106, 107, 108, 109],
    [100, 101, 102, 100, 999, 103, -1, 104, -1, 110],
    [107, 108, 109, 110, 111, 100, 103, 104, 105, 106],
    [100, 101, 103, 104, 105, 106, 107, 108, 109, 110],
]


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """A prepared dataset written by hand (the files `blade prepare` writes), no genres."""
    out = tmp_path_factory.mktemp("crafted")
    targets = pd.Series([t for _, t in CRAFT_TRAIN])
    pd.DataFrame({"item_id": CRAFT_IDS, "title": [f"item {i}" for i in CRAFT_IDS], "genres": [None] * 12,
                  "train_pop": [int((targets == i).sum()) for i in CRAFT_IDS], "pop_group": CRAFT_GROUP}
                 ).to_parquet(out / "items.parquet")
    for name, rows in {"train": CRAFT_TRAIN, "valid": CRAFT_TEST, "test": CRAFT_TEST}.items():
        pd.DataFrame({"context_id": [f"{name}{r}" for r in range(len(rows))], "user_id": [f"u{r}" for r in range(len(rows))],
                      "history": [h for h, _ in rows], "target": [t for _, t in rows],
                      "timestamp": pd.array([None] * len(rows), dtype="Int64")}).to_parquet(out / f"{name}.parquet")
    stats = {"popularity": {"n_groups": 4, "train_share": [0.5, 0.3, 0.2, 0.0], "item_share": [0.25, 0.35, 0.4, 0.0]},
             "genres": None}
    (out / "stats.json").write_text(json.dumps(stats))
    return out


def ifairlrs_pooled(lists, histories, group_of, n_groups, k):
    """MGU@k, DGU@k as IFairLRS defines them, written from the paper and its official counting
    (code/evaluate_all_pop.py): group counts summed over every user's top-k and every user's
    history, each turned into shares, GU = rec share − history share, MGU = mean |GU| over all
    groups, DGU = max GU − min GU. Slots that are not distinct catalogue items count nowhere."""
    rec, hist = [0] * n_groups, [0] * n_groups
    for items in lists:
        seen = set()
        for i in items[:k]:
            if i in group_of and i not in seen:
                rec[group_of[i]] += 1
            seen.add(i)
    for history in histories:
        for i in history:
            hist[group_of[i]] += 1
    gu = [r / sum(rec) - h / sum(hist) for r, h in zip(rec, hist)]
    return sum(abs(g) for g in gu) / n_groups, max(gu) - min(gu)


@pytest.mark.slow
def test_cli_evaluate_mgu_dgu_are_the_ifairlrs_pooled_numbers(tmp_path, crafted):
    recs = _write(tmp_path / "recs.jsonl", [{"row": r, "items": items} for r, items in enumerate(CRAFT_RECS)])
    proc = _cli_evaluate(recs, crafted, tmp_path / "eval")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    per_user = pd.read_parquet(tmp_path / "eval" / "per_user.parquet")
    group_of = dict(zip(CRAFT_IDS, CRAFT_GROUP))
    histories = [h for h, _ in CRAFT_TEST]
    for k in (5, 10):
        mgu, dgu = ifairlrs_pooled(CRAFT_RECS, histories, group_of, 4, k)
        assert metrics[f"mgu_pop@{k}"] == pytest.approx(mgu, abs=1e-12), k
        assert metrics[f"dgu_pop@{k}"] == pytest.approx(dgu, abs=1e-12), k
        # the per-user variant lives in per_user.parquet (and its mean beside the pooled number)
        assert f"mgu_pop@{k}" not in per_user and f"mgu_pop_user@{k}" in per_user
        assert metrics[f"mgu_pop_user@{k}"] == pytest.approx(per_user[f"mgu_pop_user@{k}"].mean())
    # the two variants really differ here, so the names cannot be swapped unnoticed
    assert abs(metrics["mgu_pop@10"] - metrics["mgu_pop_user@10"]) > 0.01
    # the mean runs over all 4 groups: the empty tail group is counted (3 groups would differ)
    assert metrics["mgu_pop@10"] != pytest.approx(ifairlrs_pooled(CRAFT_RECS, histories, group_of, 3, 10)[0])
    assert not any("genre" in name for name in metrics)  # no genres in this dataset


def test_empty_tail_group_counts_alike_in_evaluation_and_reward(crafted):
    items, splits, stats = load_prepared(crafted)
    assert items["pop_group"].max() == 2  # group 3 has no item
    env = ListReward(RewardConfig(weights={"fairness": 1.0}, fairness_target="uniform"), items, splits["train"], stats)
    assert env.catalogue.n_groups == build_catalogue(items, stats, splits["test"]["history"].tolist()).n_groups == 4
    # one item of each of the 3 non-empty groups vs uniform over 4: 1 − ½(3·|1/3 − 1/4| + 1/4) = 3/4
    np.testing.assert_allclose(env([[100]], None, np.array([[100, 103, 107]]))["fairness"], [0.75])


def test_ild_without_genres_is_the_diversity_reward_distance(tmp_path, crafted):
    recs = _write(tmp_path / "recs.jsonl", [{"row": r, "items": items} for r, items in enumerate(CRAFT_RECS)])
    evaluate(recs, PreparedData.load(crafted), "test", tmp_path / "eval", ks=(5, 10))
    ild = pd.read_parquet(tmp_path / "eval" / "per_user.parquet")[["ild@5", "ild@10"]].to_numpy()

    # hand: A = C + Cᵀ of the train co-occurrence (last history item -> target); d = 1 − cosine of
    # A's rows, 0 between two items that never co-occur (11 of 12 items here, so dim 64 is exact)
    ix = {i: n for n, i in enumerate(CRAFT_IDS)}
    c = np.zeros((12, 12))
    for history, target in CRAFT_TRAIN:
        c[ix[history[-1]], ix[target]] += 1
    a = c + c.T
    norm = np.linalg.norm(a, axis=1)
    unit = a / np.where(norm > 0, norm, 1.0)[:, None]
    d = 1.0 - np.clip(unit @ unit.T, 0.0, 1.0)
    d[np.ix_(norm == 0, norm == 0)] = 0.0
    for r, items in enumerate(CRAFT_RECS):
        for col, k in enumerate((5, 10)):
            valid = list(dict.fromkeys(i for i in items[:k] if i in ix))  # distinct catalogue items
            pairs = [(ix[x], ix[y]) for n, x in enumerate(valid) for y in valid[n + 1:]]
            assert ild[r, col] == pytest.approx(np.mean([d[p] for p in pairs]), abs=1e-5), (r, k)

    # and the diversity reward on the same lists: equal where every slot is valid (rows 0, 2, 3)
    items, splits, stats = load_prepared(crafted)
    env = ListReward(RewardConfig(weights={"diversity": 1.0}), items, splits["train"], stats)
    assert env.diversity_basis == "cooccurrence"
    reward = env([[100]] * 4, None, np.array(CRAFT_RECS))["diversity"]
    np.testing.assert_allclose(reward[[0, 2, 3]], ild[[0, 2, 3], 1], atol=1e-6)
    assert reward[1] < ild[1, 1]  # invalid slots: the reward counts their pairs as 0, ILD skips them
