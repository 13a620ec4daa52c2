"""analysis/publish.py: the docs/results snapshot of a finished run."""

import pandas as pd
import pytest

from analysis.publish import TABLES, publish, significance_summary


def _row(**kw):
    base = dict(dataset="vg", reward_setting="ndcg", split="test", baseline="cooc", metric="ndcg@10", blade_mean=0.05,
                baseline_mean=0.06, diff=-0.01, ci_low=-0.015, ci_high=-0.005, d_z=-0.2, p_ttest_holm=0.001,
                p_perm_holm=0.002, significant=True, better="baseline", mde=0.0031)
    return {**base, **kw}


def test_significance_summary_states_each_comparison():
    frame = pd.DataFrame([_row(), _row(baseline="sft", diff=0.002, significant=False, better="blade"),
                          _row(metric="coverage@10"), _row(reward_setting="ndcg+fairness", baseline="dpo", better="blade",
                                                            diff=0.01, ci_low=0.004, ci_high=0.016)])
    text = significance_summary(frame)
    assert text.count("## ") == 2 and "## vg · ndcg · test" in text and "## vg · ndcg+fairness · test" in text
    assert "| ndcg@10 | cooc | 0.0500 | 0.0600 | -0.0100 | [-0.0150, -0.0050] | -0.200 | 0.0031 | 0.001 | 0.002 | row better |" in text
    assert "| sft |" in text and "no significant difference" in text
    assert "| dpo |" in text and "BLADE better" in text
    assert "coverage@10" not in text  # only the summary metrics


def test_publish_copies_the_run_and_refuses_an_unfinished_one(tmp_path):
    results = tmp_path / "results"
    (results / "tables").mkdir(parents=True)
    (results / "figures").mkdir()
    with pytest.raises(SystemExit, match="main.md"):
        publish(results, tmp_path / "out", "snakemake")
    for name in TABLES:
        (results / "tables" / name).write_text(f"# {name}\n")
    pd.DataFrame([_row()]).to_csv(results / "tables" / "significance.csv", index=False)
    (results / "figures" / "static_bound.png").write_bytes(b"\x89PNG")
    (results / "figures" / "static_bound.pdf").write_bytes(b"%PDF")
    publish(results, tmp_path / "out", "snakemake --cores all --configfile config/real.yaml")
    out = tmp_path / "out"
    assert (out / "main.md").read_text() == "# main.md\n"
    assert (out / "command.txt").read_text() == "snakemake --cores all --configfile config/real.yaml\n"
    assert (out / "figures" / "static_bound.png").read_bytes() == b"\x89PNG"
    assert not (out / "figures" / "static_bound.pdf").exists()
    assert "row better" in (out / "significance.md").read_text()


def test_sft_gap_row_properties_by_hand():
    from analysis.sft_gap import row_properties, train_transitions

    train = pd.DataFrame({"history": [[1, 2], [2, 3], [5]], "target": [3, 4, 3]})
    assert train_transitions(train) == {(1, 2), (2, 3), (3, 4), (5, 3)}
    test = pd.DataFrame({"history": [[7, 2], [4], [5], [1]], "target": [3, 5, 3, 9]})
    props = row_properties(train, test)
    assert props["transition_in_train"].tolist() == [True, False, True, False]
    # target 3 occurs twice as a train target, 5 never (it is only a history item), 9 never
    assert props["target_train_count"].tolist() == ["1-4", "cold (0)", "1-4", "cold (0)"]


def test_leakage_residual_by_hand():
    from analysis.leakage_residual import residual_hits, same_series_share, series_name

    assert series_name("The Two Towers (The Lord of the Rings, #2)") == "The Lord of the Rings"
    assert series_name("Dune") is None and series_name("Vol (#3)") is None
    titles = {1: "A (Saga, #1)", 2: "B (Saga, #2)", 3: "C", 4: "D", 5: "E", 6: "F", 7: "G"}
    # train sequences: 5 6 1 2 | 7 3 4 6 | 3 1 2 7 5
    train = pd.DataFrame({"history": [[5, 6, 1], [7, 3, 4], [3, 1, 2, 7]], "target": [2, 6, 5]})
    # test sequences:  3 4 1 2 | 6 3 4 6 | 1 6 7 | 3 1
    test = pd.DataFrame({"history": [[3, 4, 1], [6, 3, 4], [1, 6], [3]], "target": [2, 6, 7, 1]})
    hits = residual_hits(train, test, titles).set_index("row")
    # (1, 2) is in train rows 0 and 2; aligned on the pair, neither agrees elsewhere (3/5, 4/6; 4/3)
    assert hits.loc[0].tolist() == [2, 0, True]
    # (4, 6) is in train row 1; aligned on it, 3 also faces 3 (6 faces 7)
    assert hits.loc[1].tolist() == [1, 1, False]
    assert 2 not in hits.index  # (6, 7) is nowhere back to back in train
    assert hits.loc[3].tolist() == [1, 0, False]  # (3, 1) opens train row 2
    assert same_series_share(test, titles) == 0.25  # only row 0 ends Saga #1 -> Saga #2


def test_largest_shared_pair_group_by_hand():
    from analysis.leakage_residual import largest_shared_pair_group

    # 1 2 3 | 2 3 9 share (2, 3); 9 4 shares nothing back to back (9 is 3's successor only in row 1);
    # 7 8 and 8 7 share no ordered pair
    a = pd.DataFrame({"history": [[1, 2], [2, 3]], "target": [3, 9]})
    b = pd.DataFrame({"history": [[9], [7], [8]], "target": [4, 8, 7]})
    assert largest_shared_pair_group([a, b]) == (2, 5)
    c = pd.DataFrame({"history": [[3, 9, 4]], "target": [7]})  # joins rows 0-1 (3 9) and row 2 (9 4)
    assert largest_shared_pair_group([a, b, c]) == (4, 6)
