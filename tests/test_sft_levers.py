"""The SFT regularisation options: learning-rate floor, slot weights, label smoothing and dropout,
each against a hand-computed or independent value; and their validation."""

import json

import numpy as np

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from blade.data import PreparedData
from blade.config import from_dict
from blade.errors import ConfigError
from blade.model.policy import Policy, PolicyConfig
from blade.train.config import SFTConfig
from blade.eval.selection import valid_metrics
from blade.train.sft import LENGTH_WINDOW, _lr_factor, add_dropout, epoch_batches, continuation_lists, prefix_rows, sft_loss, slot_weights, train_sft
from tests.helpers import tiny_dataset

SMALL_POLICY = PolicyConfig(hidden=32, heads=2, kv_heads=1, intermediate=64, device="cpu")


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    items = pd.read_parquet(tiny_dataset(tmp_path_factory.mktemp("data")) / "items.parquet")
    torch.manual_seed(0)
    return Policy.build(SMALL_POLICY, items)


def test_lr_floor_by_hand():
    # warm-up 2 steps, 10 in all, floor 0.1: 1/2, 1, then 0.1 + 0.9·½(1 + cos(π·(s-2)/8))
    assert _lr_factor(0, 2, 10, 0.1) == pytest.approx(0.5)
    assert _lr_factor(2, 2, 10, 0.1) == pytest.approx(1.0)
    assert _lr_factor(6, 2, 10, 0.1) == pytest.approx(0.55)
    assert _lr_factor(10, 2, 10, 0.1) == pytest.approx(0.1)
    assert _lr_factor(10, 2, 10) == pytest.approx(0.0)


def test_slot_weights_follow_each_items_tokens():
    class TwoTokenCodes:  # item i has i % 2 + 1 tokens, as a title codec's items have several
        def list_tokens(self, items):
            return [t for i in items for t in [i] * (i % 2 + 1)]

    assert slot_weights(TwoTokenCodes(), [4, 7, 2], 0.5) == [1.0, 0.5, 0.5, 0.25]
    assert slot_weights(TwoTokenCodes(), [4, 7, 2], 0.0) == [1.0, 0.0, 0.0, 0.0]  # the next item only


def _one_row_cross_entropy(policy, prompt, cont, smoothing):
    """Independent: one unpadded row through the plain HF forward, torch's own label smoothing."""
    ids = torch.tensor([prompt + cont])
    logits = policy.model(input_ids=ids).logits[0, len(prompt) - 1:-1]  # (T, V): position t-1 predicts token t
    return F.cross_entropy(logits, torch.tensor(cont), label_smoothing=smoothing, reduction="none")  # (T,)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_sft_loss_matches_torch_cross_entropy(policy, smoothing):
    policy.model.eval()
    codec = policy.codec
    items = codec.item_ids
    prompt, cont = codec.prompt(items[:4], 10), codec.list_tokens(items[5:8])
    weights = slot_weights(codec, items[5:8], 0.5)  # atomic codec: one token per item
    with torch.no_grad():
        ours = sft_loss(policy, [prompt], [cont], [weights], smoothing)
        ce = _one_row_cross_entropy(policy, prompt, cont, smoothing)
    w = torch.tensor([1.0, 0.5, 0.25])
    assert ours.item() == pytest.approx(float((w * ce).sum() / w.sum()), rel=1e-5)


def test_sft_loss_unweighted_is_the_token_mean_over_padded_rows(policy):
    """Equal weights: the mean token NLL over all rows' tokens (rows of different lengths)."""
    policy.model.eval()
    codec, items = policy.codec, policy.codec.item_ids
    rows = [(items[:3], items[3:6]), (items[6:7], items[7:8])]
    prompts = [codec.prompt(h, 10) for h, _ in rows]
    conts = [codec.list_tokens(t) for _, t in rows]
    with torch.no_grad():
        ours = sft_loss(policy, prompts, conts, [[1.0] * len(c) for c in conts], 0.0)
        each = torch.cat([_one_row_cross_entropy(policy, p, c, 0.0) for p, c in zip(prompts, conts)])
    assert ours.item() == pytest.approx(each.mean().item(), rel=1e-5)


def test_dropout_only_in_training_and_not_saved(policy, tmp_path):
    items = pd.read_parquet(tiny_dataset(tmp_path / "data") / "items.parquet")
    torch.manual_seed(1)
    model = Policy.build(SMALL_POLICY, items)
    ids = torch.tensor([model.codec.prompt(model.codec.item_ids[:5], 10)])
    model.model.eval()
    with torch.no_grad():
        before = model.model(input_ids=ids).logits
    add_dropout(model.model, 0.3)
    with torch.no_grad():
        torch.testing.assert_close(model.model(input_ids=ids).logits, before)  # eval: no dropout
        model.model.train()
        a, b = model.model(input_ids=ids).logits, model.model(input_ids=ids).logits
    assert not torch.allclose(a, b)
    assert all(layer.self_attn.attention_dropout == 0.3 for layer in model.model.model.layers)
    model.save(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["attention_dropout"] == 0.0
    reloaded = Policy.load(tmp_path / "saved", "cpu")
    reloaded.model.train()
    with torch.no_grad():  # the saved model trains without dropout: two passes agree
        torch.testing.assert_close(reloaded.model(input_ids=ids).logits, reloaded.model(input_ids=ids).logits)


def test_every_lever_on_still_learns(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    items, valid = pd.read_parquet(data / "items.parquet"), pd.read_parquet(data / "valid.parquet")
    untrained = valid_metrics(Policy.build(SMALL_POLICY, items), valid, 10, [10], 256)
    cfg = SFTConfig(epochs=3, batch_size=32, warmup_steps=5, weight_decay=0.1, dropout=0.1, label_smoothing=0.1,
                    target_decay=0.5, min_lr_ratio=0.1, prefixes=True)
    summary = train_sft(PreparedData.load(data), tmp_path / "sft", SMALL_POLICY, cfg, seed=0)
    assert summary["valid/ndcg@10"] > untrained["ndcg@10"] + 0.1, (untrained, summary)


def test_length_batches_see_every_row_once_and_pad_less():
    lengths = np.random.default_rng(5).integers(20, 400, size=3000)
    plain_cfg, sorted_cfg = SFTConfig(batch_size=16), SFTConfig(batch_size=16, length_batches=True)
    plain = epoch_batches(np.random.default_rng([0, 0]), lengths, plain_cfg)
    # off: the slices of one permutation, exactly as before the option existed
    assert np.array_equal(np.concatenate(plain), np.random.default_rng([0, 0]).permutation(3000))
    grouped = epoch_batches(np.random.default_rng([0, 0]), lengths, sorted_cfg)
    assert sorted(np.concatenate(grouped).tolist()) == list(range(3000)) and len(grouped) == len(plain) == 188
    assert [len(b) for b in grouped].count(16) == 187  # one short batch, as without grouping

    def padded(batches):  # tokens a batch pads to: rows x its longest row
        return sum(len(b) * lengths[b].max() for b in batches)

    assert padded(grouped) < 0.6 * padded(plain)  # about half the padding of plain batches here
    # within a window the rows run longest first; the batch order is shuffled, not by length
    first = grouped[0]
    assert (np.diff(lengths[first]) <= 0).all()
    assert not (np.diff([lengths[b].max() for b in grouped]) <= 0).all()
    assert LENGTH_WINDOW * 16 < 3000  # more than one window in this test
    again = epoch_batches(np.random.default_rng([0, 0]), lengths, sorted_cfg)
    assert all(np.array_equal(a, b) for a, b in zip(grouped, again))  # a function of (seed, epoch)


def test_train_rows_trains_on_a_fixed_sample(tmp_path, monkeypatch):
    import blade.train.sft as sft

    data = PreparedData.load(tiny_dataset(tmp_path / "data"))
    seen = []
    real = sft.sft_loss
    monkeypatch.setattr(sft, "sft_loss", lambda policy, prompts, *a, **kw: (seen.extend(map(tuple, prompts)),
                                                                             real(policy, prompts, *a, **kw))[1])
    cfg = SFTConfig(epochs=2, batch_size=16, warmup_steps=1, train_rows=40, patience=5)
    train_sft(data, tmp_path / "sft", SMALL_POLICY, cfg, seed=0)
    rows = np.sort(np.random.default_rng(0).permutation(len(data.train))[:40])
    policy = Policy.load(tmp_path / "sft" / "best")
    expect = {tuple(policy.codec.prompt(h, cfg.k)) for h in data.train["history"].iloc[rows]}
    assert len(seen) == 80 and set(seen) == expect  # 40 rows, each once per epoch, no other row


def test_prefix_rows_by_hand():
    # no user id: row 0 (1 2 3 → 4) continues into row 1 (2 3 4 → 5); row 2 stands alone
    train = pd.DataFrame({"user_id": [None] * 3, "timestamp": [None] * 3,
                          "history": [[1, 2, 3], [2, 3, 4], [7, 7]], "target": [4, 5, 8]})
    targets = continuation_lists(train, 3)
    assert targets == [[4, 5], [5], [8]]
    histories, lists = prefix_rows(train, targets, 3)
    # row 0: [1]→2 3 4, [1 2]→3 4 5 (its continuation 5 after the target); row 1: [2]→3 4 5,
    # [2 3]→4 5; row 2: [7]→7 8
    assert histories == [[1], [1, 2], [2], [2, 3], [7]]
    assert lists == [[2, 3, 4], [3, 4, 5], [3, 4, 5], [4, 5], [7, 8]]
    # a prefix equal to a train row, (history, target) alike, is not added again
    again = pd.concat([train, pd.DataFrame({"user_id": [None], "timestamp": [None], "history": [[2]], "target": [3]})],
                      ignore_index=True)
    histories, _ = prefix_rows(again, continuation_lists(again, 3), 3)
    assert [2] not in histories and histories.count([1]) == 1


@pytest.mark.parametrize("key,value", [("dropout", 1.0), ("label_smoothing", -0.1), ("target_decay", 1.5),
                                       ("min_lr_ratio", 2.0)])
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        from_dict(SFTConfig, {key: value}, "sft")
