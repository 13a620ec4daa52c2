"""blade.data.leakage: the two train-continuation shares on a hand case, and their place in stats.json."""

import pandas as pd
import pytest

from blade.data import load_prepared, prepare
from blade.data.leakage import leakage

BIG = 10**12  # item ids need not be small or dense


def rows(pairs):
    return pd.DataFrame({"history": [[BIG + i for i in h] for h, _ in pairs], "target": [BIG + t for _, t in pairs]})


# train sequences (history then target): 1 2 3 and 4 5
TRAIN = rows([([1, 2], 3), ([4], 5)])
# (last, target): (1, 3) follows 1 two items later but not back to back; (2, 3) back to back;
# (5, 4) runs the wrong way; (4, 5) back to back, and 5 is a train *target*
TEST = rows([([9, 1], 3), ([2], 3), ([5], 4), ([7, 4], 5)])
VALID = rows([([3], 1)])


def test_hand_case():
    out = leakage({"train": TRAIN, "valid": VALID, "test": TEST}, n_shuffles=4000)
    test = out["test"]
    assert test["rows"] == 4
    assert (test["follows"], test["adjacent"]) == (3 / 4, 2 / 4)
    # A random permutation gives row i a uniform target among the split's targets (3, 3, 4, 5), so
    # the baseline's expectation is the share of the 16 (last, target) combinations in train:
    # follows: last 1 → 3, 3; last 2 → 3, 3; last 4 → 5 = 5/16; adjacent: 2 → 3, 3; 4 → 5 = 3/16.
    # 4000 permutations put the mean within ~0.003 (one standard error); 0.015 is five.
    assert test["follows_shuffled"] == pytest.approx(5 / 16, abs=0.015)
    assert test["adjacent_shuffled"] == pytest.approx(3 / 16, abs=0.015)
    zero = {"follows": 0.0, "follows_shuffled": 0.0, "adjacent": 0.0, "adjacent_shuffled": 0.0}
    assert out["valid"] == {"rows": 1, **zero}  # 1 comes before 3 in train, not after it


def test_seeded_and_checked():
    splits = {"train": TRAIN, "valid": VALID, "test": TEST}
    assert leakage(splits, seed=3) == leakage(splits, seed=3)
    assert leakage(splits, seed=3)["seed"] == 3
    with pytest.raises(ValueError, match="n_shuffles must be >= 1"):
        leakage(splits, n_shuffles=0)


def test_prepare_writes_leakage_computed_from_the_written_splits(tmp_path):
    spec = {"source": "synthetic", "params": {"n_users": 60, "n_items": 30, "seed": 1}}
    stats = prepare(spec, tmp_path / "out")
    _, splits, stored = load_prepared(tmp_path / "out")
    assert stored["leakage"] == stats["leakage"] == leakage(splits)
    # the synthetic users follow item-to-item dynamics: their next item is far likelier than a shuffled one
    assert stats["leakage"]["test"]["adjacent"] > stats["leakage"]["test"]["adjacent_shuffled"]
