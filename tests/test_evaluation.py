"""Recommendation files and ``evaluate``: the public recs format, its error messages, and per-user
Recall/NDCG checked against values worked out by hand; ``blade evaluate`` as a subprocess."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from blade.errors import DataError
from blade.evaluation import evaluate, read_recs, write_recs
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
    np.testing.assert_array_equal(read_recs(tmp_path / "recs.jsonl", 3), lists)


def test_read_accepts_any_line_order_blank_lines_and_ragged_lists(tmp_path):
    path = _write(tmp_path / "recs.jsonl", [{"row": 2, "items": [7]}, "\n", {"row": 0, "items": [4, 5, 6]},
                                            {"row": 1, "items": [], "score": "extra keys are ignored"}])
    np.testing.assert_array_equal(read_recs(path, 3), [[4, 5, 6], [-1, -1, -1], [7, -1, -1]])


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
    summary = evaluate(recs, data, "test", tmp_path / "eval", ks=(1, 3, 5))

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
    summary = evaluate(recs, data, "valid", tmp_path / "eval", ks=(2,))
    assert summary["recall@2"] == 0 and summary["ndcg@2"] == 0
    assert summary["invalid_rate"] == 1.0
    assert summary["coverage@2"] == 0


def test_evaluate_rejects_bad_cutoffs_and_split(tmp_path, data):
    recs = tmp_path / "recs.jsonl"
    write_recs(recs, np.zeros((len(pd.read_parquet(data / "test.parquet")), 5), dtype=int))
    with pytest.raises(ValueError, match="positive integers"):
        evaluate(recs, data, "test", tmp_path / "eval", ks=(0, 5))
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        evaluate(recs, data, "dev", tmp_path / "eval")


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
