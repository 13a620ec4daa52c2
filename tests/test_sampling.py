"""The list sampler: K distinct valid items, exact log-probs, the constrained distribution it samples
from, determinism, and agreement with ``transformers`` ``generate(prefix_allowed_tokens_fn=...)``;
its lean decoder against the model's own forward (Qwen2, Llama, LoRA; other models fall back), and
its token chooser (inverse-CDF and nucleus draws, greedy ties, underflow of the allowed mass).

Everything runs on tiny catalogues with randomly initialised tiny models (a few seconds on CPU).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pandas as pd
import pytest
import torch

from blade.model.policy import Policy, PolicyConfig
from blade.model.trie import Trie
from blade.metrics import invalid_rate
from blade.sampling import ListSampler, _Chooser, _LeanLM

CODECS = ["atomic", "title"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine spinning OpenMP
    threads slow these tests down by orders of magnitude; the previous setting is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# Titles that are prefixes of each other, and a duplicate title ("Halo 2" twice).
HALO = pd.DataFrame({
    "item_id": [10, 11, 12, 13, 14, 15, 16, 17],
    "title": ["Halo", "Halo 2", "Halo 2", "Halo 2: Remastered", "Zelda", "Mario Kart 8 Deluxe Edition", "Tetris",
              "Doom Eternal"],
    "genres": [["shooter"], ["shooter"], ["shooter"], ["shooter"], ["adventure"], ["racing"], ["puzzle"], ["shooter"]],
})
HALO_HISTORIES = [[10], [11, 12], [15, 16, 17, 13], [14, 10, 11, 12, 13, 15], [17]]


def _synthetic_items(n: int = 30) -> pd.DataFrame:
    words = ["Secret", "Voyage", "Endless", "Tower", "Shadow", "Kingdom", "Frozen", "Mirror", "Last", "Machine"]
    titles = [" ".join(words[(i * j) % len(words)] for j in range(1, 2 + i % 4)) + f" {i}" for i in range(n)]
    return pd.DataFrame({"item_id": [100 + 3 * i for i in range(n)], "title": titles,
                         "genres": [[words[i % 3]] for i in range(n)]})


SYNTH = _synthetic_items()
SYNTH_HISTORIES = [[int(SYNTH.item_id[(7 * r + j) % len(SYNTH)]) for j in range(1 + r % 6)] for r in range(12)]
CATALOGUES = {"halo": (HALO, HALO_HISTORIES), "synthetic": (SYNTH, SYNTH_HISTORIES)}


def _policy(codec: str, items: pd.DataFrame, seed: int = 0, sharpen: float = 1.0) -> Policy:
    torch.manual_seed(seed)
    pol = Policy.build(PolicyConfig(codec=codec, layers=2, hidden=32, heads=4, kv_heads=2, intermediate=64,
                                    title_vocab_size=200, device="cpu"), items)
    if sharpen != 1.0:  # tied embeddings: larger logits, so the distribution is far from uniform
        with torch.no_grad():
            pol.model.get_output_embeddings().weight.mul_(sharpen)
    pol.model.eval()
    return pol


_POLICIES: dict = {}


def policy(codec: str, catalogue: str) -> Policy:
    if (codec, catalogue) not in _POLICIES:
        _POLICIES[codec, catalogue] = _policy(codec, CATALOGUES[catalogue][0], sharpen=4.0)
    return _POLICIES[codec, catalogue]


def prompts_for(pol: Policy, catalogue: str, k: int) -> list[list[int]]:
    return [pol.codec.prompt(h, k) for h in CATALOGUES[catalogue][1]]


def check_lists(pol: Policy, lists, n_rows: int, k: int) -> None:
    catalogue = set(pol.codec.item_ids)
    assert lists.items.shape == (n_rows, k)
    assert lists.invalid_rate == 0.0
    for r, row in enumerate(lists.items.tolist()):
        assert len(set(row)) == k, f"row {r} repeats an item: {row}"
        assert set(row) <= catalogue, f"row {r} has items outside the catalogue: {row}"
        # the tokens under the mask are exactly the items' codes, in order
        expected = pol.codec.list_tokens(row)
        assert lists.tokens[r][lists.mask[r]].tolist() == expected
        assert int(lists.mask[r].sum()) == len(expected)
        assert bool(lists.mask[r, : len(expected)].all())  # real tokens first, then padding
    assert (lists.sample_logp[~lists.mask] == 0).all()
    assert (lists.logp[~lists.mask] == 0).all()
    assert torch.isfinite(lists.sample_logp).all() and (lists.sample_logp <= 1e-6).all()


# ---- validity -----------------------------------------------------------------------------------
@pytest.mark.parametrize("catalogue", ["halo", "synthetic"])
@pytest.mark.parametrize("codec", CODECS)
def test_lists_are_k_distinct_valid_items(codec, catalogue):
    pol = policy(codec, catalogue)
    n = len(pol.codec.item_ids)
    for k in (3, n):  # k == n: the last item of every list is forced by the remaining counts
        prompts = prompts_for(pol, catalogue, k)
        for greedy in (False, True):
            sampler = ListSampler(pol, k=k, temperature=1.3, top_p=0.9, batch_size=4)
            lists = sampler.generate(prompts, greedy=greedy, generator=torch.Generator().manual_seed(k))
            check_lists(pol, lists, len(prompts), k)
            if k == n:
                assert all(sorted(row) == sorted(pol.codec.item_ids) for row in lists.items.tolist())


def test_duplicate_and_prefix_titles_are_distinct_items():
    pol = policy("title", "halo")
    titles = pol.codec.titles
    assert titles[1] == "Halo 2" and titles[2] == "Halo 2 #2"
    codes = [tuple(c) for c in pol.codec.codes]
    assert len(set(codes)) == len(codes)
    # "Halo" is a prefix of "Halo 2" as text, but the end-of-item token keeps the codes prefix-free
    assert codes[1][: len(codes[0]) - 1] == codes[0][:-1]
    # a near-uniform model over many samples reaches every one of the look-alike items
    flat = _policy("title", HALO, seed=1)
    lists = ListSampler(flat, k=2, batch_size=256).generate([flat.codec.prompt([14], 2)] * 256,
                                                            generator=torch.Generator().manual_seed(0))
    check_lists(flat, lists, 256, 2)
    assert {10, 11, 12, 13} <= set(lists.items.flatten().tolist())


def test_k_outside_catalogue_size_is_rejected():
    pol = policy("atomic", "halo")
    with pytest.raises(ValueError, match="catalogue size"):
        ListSampler(pol, k=len(HALO) + 1)
    with pytest.raises(ValueError):
        ListSampler(pol, k=0)


# ---- log-probabilities --------------------------------------------------------------------------
@pytest.mark.parametrize("greedy", [False, True])
@pytest.mark.parametrize("codec", CODECS)
def test_logp_equals_teacher_forced_constrained_token_logprobs(codec, greedy):
    """``lists.logp`` (drawn at temperature 0.8, top-p 0.9) is the constrained log-prob at
    temperature 1 — the policy being trained —, exactly what the training forward computes for the
    same lists with ``constrained=True`` (the mask replayed over the given tokens)."""
    pol = policy(codec, "synthetic")
    k = 4
    prompts = prompts_for(pol, "synthetic", k)
    assert len({len(p) for p in prompts}) > 3  # left padding of different lengths in one batch
    lists = ListSampler(pol, k=k, temperature=0.8, top_p=0.9, batch_size=5).generate(
        prompts, greedy=greedy, generator=torch.Generator().manual_seed(3))
    conts = [pol.codec.list_tokens(row) for row in lists.items.tolist()]
    with torch.no_grad():
        ref, mask = pol.token_logprobs(prompts, conts, constrained=True)
        raw, _ = pol.token_logprobs(prompts, conts)
    T = ref.shape[1]
    assert torch.equal(lists.mask[:, :T], mask) and not lists.mask[:, T:].any()
    torch.testing.assert_close(lists.logp[:, :T], ref, atol=1e-4, rtol=0)
    # the model's own (unconstrained) log-probs are lower: the mask removes mass at every position
    assert bool((raw[mask] < ref[mask] - 1e-4).all())
    # and each row alone (no padding at all) gives the same numbers
    for r in (0, len(prompts) - 1):
        with torch.no_grad():
            alone, _ = pol.token_logprobs([prompts[r]], [conts[r]], constrained=True)
        torch.testing.assert_close(lists.logp[r, : len(conts[r])], alone[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("codec", CODECS)
def test_constrained_token_logprobs_by_hand(codec):
    """Independent of blade's trie and mask: at each position, the softmax of the full forward's
    logits over the tokens that continue the code of some item not yet listed (sets of tuples);
    unconstrained: the plain log-softmax over the vocabulary (SFT's NLL, unchanged)."""
    pol = policy(codec, "halo")
    codes = [tuple(c) for c in pol.codec.codes]
    lists = [[10, 11, 12], [13], [16, 14]]  # ragged: padding after the shorter lists
    prompts = [pol.codec.prompt(h, 3) for h in ([10], [11, 12], [15, 16, 17, 13])]
    conts = [pol.codec.list_tokens(lst) for lst in lists]
    with torch.no_grad():
        con, mask = pol.token_logprobs(prompts, conts, constrained=True)
        raw, _ = pol.token_logprobs(prompts, conts)
    for r, (prompt, cont) in enumerate(zip(prompts, conts)):
        with torch.no_grad():
            logits = pol.model(input_ids=torch.tensor([prompt + cont])).logits[0, len(prompt) - 1:-1].double()
        taken, cur = set(), ()
        for t, tok in enumerate(cont):
            allowed = sorted({c[len(cur)] for i, c in enumerate(codes) if i not in taken and c[:len(cur)] == cur})
            want = logits[t, tok] - logits[t, allowed].logsumexp(-1)
            assert float(con[r, t]) == pytest.approx(float(want), abs=1e-4), (r, t)
            assert float(raw[r, t]) == pytest.approx(float(logits[t].log_softmax(-1)[tok]), abs=1e-4), (r, t)
            cur = cur + (tok,)
            if cur in codes:
                taken.add(codes.index(cur))
                cur = ()
        assert (con[r, len(cont):] == 0).all() and not mask[r, len(cont):].any()


@pytest.mark.parametrize("codec", CODECS)
def test_constrained_token_logprobs_reject_lists_the_sampler_cannot_produce(codec):
    pol = policy(codec, "halo")
    prompt = pol.codec.prompt([10], 3)
    repeated = pol.codec.list_tokens([11, 14, 11])
    with pytest.raises(ValueError, match=r"list 1: token \d+ at position \d+ is not allowed"):
        pol.token_logprobs([prompt, prompt], [pol.codec.list_tokens([11, 14]), repeated], constrained=True)
    off_trie = [pol.codec.pad_id]  # padding is no item's code
    with pytest.raises(ValueError, match="list 0: token .* at position 0"):
        pol.token_logprobs([prompt], [off_trie], constrained=True)


def _constrained_pair_probs(pol: Policy, prompt: list[int], temperature: float = 1.0, top_p: float = 1.0):
    """Independent enumeration: P(a, b) = P(a | x) P(b | x, a) under the masked, tempered, nucleus
    distribution over the (atomic) item tokens, computed with full forward passes (no cache)."""
    toks = [c[0] for c in pol.codec.codes]

    def dist(seq, allowed):
        with torch.no_grad():
            logits = pol.model(input_ids=torch.tensor([seq])).logits[0, -1].double()
        p = (logits[allowed] / temperature).softmax(-1)
        order = p.argsort(descending=True)
        keep, mass = [], 0.0
        for j in order.tolist():  # smallest set of most likely tokens whose mass reaches top_p
            keep.append(j)
            mass += float(p[j])
            if mass >= top_p - 1e-12:
                break
        q = torch.zeros_like(p)
        q[keep] = p[keep] / p[keep].sum()
        return {allowed[j]: float(q[j]) for j in range(len(allowed))}

    first = dist(prompt, toks)
    probs = {}
    for a in toks:
        rest = [t for t in toks if t != a]
        second = dist(prompt + [a], rest)
        for b in rest:
            probs[a, b] = first[a] * second[b]
    tok_to_item = dict(zip(toks, pol.codec.item_ids))
    return {(tok_to_item[a], tok_to_item[b]): p for (a, b), p in probs.items()}


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.8)])
def test_sample_logp_is_the_constrained_list_distribution(temperature, top_p):
    items = pd.DataFrame({"item_id": [3, 5, 7, 9], "title": ["a", "b", "c", "d"], "genres": [["x"]] * 4})
    pol = _policy("atomic", items, seed=0, sharpen=8.0)
    prompt = pol.codec.prompt([3, 7], 2)
    n = 4000
    lists = ListSampler(pol, k=2, temperature=temperature, top_p=top_p, batch_size=n).generate(
        [prompt] * n, generator=torch.Generator().manual_seed(1))
    check_lists(pol, lists, n, 2)
    list_logp = lists.sample_logp.sum(1).double()
    pairs = [tuple(r) for r in lists.items.tolist()]
    counts = Counter(pairs)
    sampler_p = {}
    for pair in counts:
        vals = list_logp[[i for i, p in enumerate(pairs) if p == pair]].exp()
        assert float(vals.max() - vals.min()) < 1e-5  # the same list always gets the same probability
        sampler_p[pair] = float(vals.mean())
    exact = _constrained_pair_probs(pol, prompt, temperature, top_p)
    assert len(exact) == 12 and math.isclose(sum(exact.values()), 1.0, abs_tol=1e-9)
    assert max(exact.values()) < 0.6 and sum(p > 0.01 for p in exact.values()) >= 4  # far from uniform
    for pair, p in sampler_p.items():
        assert p == pytest.approx(exact[pair], abs=1e-4), pair
    if top_p == 1.0:
        assert len(counts) == 12  # every ordered pair is reachable and was drawn
        assert sum(sampler_p.values()) == pytest.approx(1.0, abs=1e-4)
    else:
        assert all(exact[pair] > 0 for pair in counts)  # nothing outside the nucleus is drawn
    # empirical frequencies match exp(sum sample_logp) within a few standard errors
    for pair, p in exact.items():
        freq = counts.get(pair, 0) / n
        se = math.sqrt(max(p * (1 - p), 1e-12) / n)
        assert abs(freq - p) <= 4.5 * se + 1e-3 * (p == 0), (pair, freq, p)
    chi2 = sum((counts.get(pair, 0) - n * p) ** 2 / (n * p) for pair, p in exact.items() if p > 0)
    dof = sum(p > 0 for p in exact.values()) - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof), chi2


# ---- determinism --------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", CODECS)
def test_same_seed_same_lists(codec):
    pol = policy(codec, "synthetic")
    prompts = prompts_for(pol, "synthetic", 5)
    sampler = ListSampler(pol, k=5, temperature=1.5, top_p=0.95, batch_size=8)
    a = sampler.generate(prompts, generator=torch.Generator().manual_seed(7))
    b = sampler.generate(prompts, generator=torch.Generator().manual_seed(7))
    c = sampler.generate(prompts, generator=torch.Generator().manual_seed(8))
    for name in ("items", "tokens", "mask", "logp", "sample_logp"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.items, c.items)
    g1 = sampler.generate(prompts, greedy=True)
    g2 = sampler.generate(prompts, greedy=True, generator=torch.Generator().manual_seed(99))
    assert torch.equal(g1.items, g2.items)


# ---- agreement with transformers generate(prefix_allowed_tokens_fn=...) -------------------------
def hf_constrained_greedy(pol: Policy, prompts: list[list[int]], k: int) -> torch.Tensor:
    """Greedy lists the way BIGRec/D3 decode: ``model.generate`` with a Python callback that allows
    only trie-valid tokens of items not yet listed (written independently of blade's Trie)."""
    codes = [tuple(c) for c in pol.codec.codes]
    code_item = {c: i for i, c in enumerate(codes)}
    pad = pol.codec.pad_id
    P, R = max(map(len, prompts)), len(prompts)
    ids = torch.full((R, P), pad, dtype=torch.long)
    attn = torch.zeros((R, P), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, P - len(p):] = torch.tensor(p)
        attn[r, P - len(p):] = 1

    def parse(gen: list[int]) -> tuple[list[int], tuple]:
        listed, cur = [], ()
        for t in gen:
            if len(listed) == k:
                break
            cur = cur + (t,)
            if cur in code_item:
                listed.append(code_item[cur])
                cur = ()
        return listed, cur

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        listed, cur = parse(sent[P:].tolist())
        if len(listed) == k:
            return [pad]
        taken, n = set(listed), len(cur)
        return sorted({c[n] for i, c in enumerate(codes) if i not in taken and c[:n] == cur})

    out = pol.model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=k * max(map(len, codes)),
                             do_sample=False, prefix_allowed_tokens_fn=allowed, pad_token_id=pad, eos_token_id=pad)
    rows = [parse(row)[0] for row in out[:, P:].tolist()]
    assert all(len(r) == k for r in rows)
    return torch.tensor([[pol.codec.item_ids[i] for i in r] for r in rows])


@pytest.mark.parametrize("catalogue", ["halo", "synthetic"])
@pytest.mark.parametrize("codec", CODECS)
def test_greedy_equals_transformers_generate_with_prefix_callback(codec, catalogue):
    pol = policy(codec, catalogue)
    for k in (3, len(pol.codec.item_ids) if catalogue == "halo" else 6):
        prompts = prompts_for(pol, catalogue, k)
        ours = ListSampler(pol, k=k, batch_size=len(prompts)).generate(prompts, greedy=True)
        assert torch.equal(ours.items, hf_constrained_greedy(pol, prompts, k))


# ---- the trie and the invalid-rate helper -------------------------------------------------------
def test_trie_rejects_codes_that_prefix_each_other():
    with pytest.raises(ValueError, match="prefix"):
        Trie.build([[1], [1, 2]])
    with pytest.raises(ValueError, match="prefix"):
        Trie.build([[1, 2], [1]])
    with pytest.raises(ValueError, match="equals"):
        Trie.build([[4, 5], [4, 5]])
    with pytest.raises(ValueError, match="empty"):
        Trie.build([[4], []])
    trie = Trie.build([[1, 2], [1, 3], [4]])
    assert trie.depth == 2 and int(trie.count[0]) == 3 and int((trie.leaf_item >= 0).sum()) == 3


def test_invalid_rate_counts_missing_outside_and_repeated_slots():
    cat = torch.tensor([1, 2, 3, 4])
    assert invalid_rate(torch.tensor([[1, 2, 3], [4, 3, 2]]), cat, per_row=False) == 0.0
    assert invalid_rate(torch.tensor([[1, -1, 3]]), cat, per_row=False) == pytest.approx(1 / 3)  # missing
    assert invalid_rate(torch.tensor([[1, 99, 3]]), cat, per_row=False) == pytest.approx(1 / 3)  # outside the catalogue
    assert invalid_rate(torch.tensor([[1, 3, 1]]), cat, per_row=False) == pytest.approx(1 / 3)   # repeated
    assert invalid_rate(torch.tensor([[2, 2, 2], [1, 2, 3]]), cat, per_row=False) == pytest.approx(2 / 6)
    # each bad slot counts once: repeated -1s or repeated outsiders are not counted twice
    assert invalid_rate(torch.tensor([[-1, -1, 2]]), cat, per_row=False) == pytest.approx(2 / 3)
    assert invalid_rate(torch.tensor([[7, 7]]), cat, per_row=False) == pytest.approx(1.0)
    assert invalid_rate(torch.empty((0, 3), dtype=torch.long), cat, per_row=False) == 0.0


def test_every_ordered_pair_enumerated_by_helper_sums_to_one():
    # sanity of the enumeration helper itself on a different seed and temperature
    items = pd.DataFrame({"item_id": [1, 2, 3], "title": ["a", "b", "c"], "genres": [["x"]] * 3})
    pol = _policy("atomic", items, seed=4, sharpen=5.0)
    exact = _constrained_pair_probs(pol, pol.codec.prompt([2], 2), temperature=1.7)
    assert set(exact) == set(itertools.permutations([1, 2, 3], 2))
    assert sum(exact.values()) == pytest.approx(1.0, abs=1e-12)


# ---- the lean decoder and the token chooser ------------------------------------------------------

def _arch_policy(codec: str, arch: str, items: pd.DataFrame = SYNTH) -> Policy:
    torch.manual_seed(5)
    pol = Policy.build(PolicyConfig(codec=codec, arch=arch, layers=2, hidden=32, heads=4, kv_heads=2, intermediate=64,
                                    title_vocab_size=200, device="cpu"), items)
    with torch.no_grad():
        pol.model.get_output_embeddings().weight.mul_(4.0)
    pol.model.eval()
    return pol


def _both_paths(pol: Policy, prompts, k: int, greedy: bool, **kw):
    out = []
    for lean in (True, False):
        sampler = ListSampler(pol, k=k, batch_size=5, **kw)
        sampler.lean = lean
        out.append(sampler.generate(prompts, greedy=greedy, generator=torch.Generator().manual_seed(11)))
    return out


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("codec", CODECS)
def test_lean_decoder_equals_the_models_own_forward(codec, arch):
    """The lean decoder (packed prefill, last layer at the last token only, repeated prompts run
    once, preallocated cache) gives the lists and log-probs of the model's own forward with a
    DynamicCache, greedy and sampled."""
    pol = _arch_policy(codec, arch)
    assert _LeanLM.supports(pol.model)
    prompts = [p for p in prompts_for(pol, "synthetic", 4) for _ in range(2)]  # each twice, as rollout groups
    assert len({len(p) for p in prompts}) > 3  # ragged left padding
    for greedy, kw in ((True, {}), (False, {"temperature": 1.3}), (False, {"temperature": 0.8, "top_p": 0.7})):
        lean, hf = _both_paths(pol, prompts, 4, greedy, **kw)
        check_lists(pol, lean, len(prompts), 4)
        for name in ("items", "tokens", "mask"):
            assert torch.equal(getattr(lean, name), getattr(hf, name)), (name, greedy, kw)
        torch.testing.assert_close(lean.logp, hf.logp, atol=1e-5, rtol=0)
        torch.testing.assert_close(lean.sample_logp, hf.sample_logp, atol=1e-5, rtol=0)


@pytest.mark.parametrize("codec", CODECS)
def test_lean_decoding_reads_the_rotary_table_bit_for_bit(codec, monkeypatch):
    """Decoding steps look their positions' (cos, sin) up in a table built at prefill; it holds the
    bits the rotary embedding computes position by position (rope scaling that changes with the
    length, dynamic or long-rope, keeps computing per step)."""
    pol = _arch_policy(codec, "qwen2")
    prompts = [p for p in prompts_for(pol, "synthetic", 4) for _ in range(2)]
    runs = []
    for table in (True, False):
        monkeypatch.setattr(_LeanLM, "_static_rope", lambda self, table=table: table)
        runs.append(ListSampler(pol, k=4, batch_size=5).generate(prompts, generator=torch.Generator().manual_seed(3)))
    for name in ("items", "tokens", "mask", "logp", "sample_logp"):
        assert torch.equal(getattr(runs[0], name), getattr(runs[1], name)), name
    monkeypatch.undo()
    lm = _LeanLM(pol.model, torch.zeros((1, 1), dtype=torch.long), torch.ones((1, 1), dtype=torch.long), 1)
    assert lm._static_rope()
    monkeypatch.setattr(lm.body.rotary_emb, "rope_type", "dynamic")
    assert not lm._static_rope()


def test_lean_prefill_logits_equal_the_models_forward():
    pol = _arch_policy("atomic", "qwen2")
    prompts = prompts_for(pol, "synthetic", 4)
    P = max(map(len, prompts))
    ids = torch.tensor([[pol.codec.pad_id] * (P - len(p)) + p for p in prompts])
    attn = (torch.arange(P) >= P - torch.tensor([len(p) for p in prompts])[:, None]).long()
    with torch.no_grad():
        ref = pol.model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
        lean = _LeanLM(pol.model, ids, attn, 3).prefill()
    torch.testing.assert_close(lean, ref, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft on transformers 5
def test_lean_decoder_runs_lora_models_through_their_adapters():
    peft = pytest.importorskip("peft")
    pol = _arch_policy("atomic", "qwen2")
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"],
                          init_lora_weights=False)  # random adapters: they change the outputs
    base_lists = ListSampler(pol, k=4, batch_size=5).generate(prompts_for(pol, "synthetic", 4), greedy=True)
    pol.model = peft.get_peft_model(pol.model, cfg)
    pol.model.eval()
    assert _LeanLM.supports(pol.model)
    prompts = prompts_for(pol, "synthetic", 4)
    lean, hf = _both_paths(pol, prompts, 4, greedy=True)
    assert torch.equal(lean.items, hf.items) and not torch.equal(lean.items, base_lists.items)
    torch.testing.assert_close(lean.logp, hf.logp, atol=1e-5, rtol=0)


def test_other_architectures_use_the_models_own_forward():
    from transformers import GPT2Config, GPT2LMHeadModel

    pol = policy("atomic", "synthetic")
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=pol.model.get_output_embeddings().weight.shape[0], n_embd=32,
                                      n_layer=2, n_head=4, n_positions=128)).eval()
    other = Policy(gpt2, pol.codec, pol.config)
    assert not _LeanLM.supports(gpt2)
    prompts = prompts_for(other, "synthetic", 4)
    lists = ListSampler(other, k=4, batch_size=5).generate(prompts, generator=torch.Generator().manual_seed(0))
    check_lists(other, lists, len(prompts), 4)
    greedy = ListSampler(other, k=4, batch_size=len(prompts)).generate(prompts, greedy=True)
    assert torch.equal(greedy.items, hf_constrained_greedy(other, prompts, 4))


def _softmax_allowed(logits: torch.Tensor, bias: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return ((logits.double() + bias.double()) / temperature).softmax(-1)


def _mask(bias: torch.Tensor) -> torch.Tensor:
    """The sampler's mask (0 allowed, -1 not) of an additive 0/-inf bias."""
    return torch.where(torch.isinf(bias), -1.0, 0.0)


@pytest.mark.parametrize("V", [7, 1000])
def test_chooser_draws_from_the_masked_tempered_softmax(V):
    """Two-level inverse-CDF sampling: frequencies match the masked, tempered softmax, masked tokens
    are never drawn, and the returned log-probs are the exact ones (constrained at temperature 1,
    and the tempered one it was drawn from)."""
    torch.manual_seed(0)
    n, temperature = 20000, 1.5
    row = torch.randn(V) * 2
    bias = torch.zeros(V)
    bias[torch.randperm(V)[: V // 3]] = float("-inf")  # a third of the tokens are not allowed
    bias[0] = float("-inf")
    row[0] = 30.0  # the model's favourite token is masked
    logits, biases = row.expand(n, V).clone(), bias.expand(n, V).clone()
    chooser = _Chooser(n, V, "cpu", False, temperature, 1.0, torch.Generator().manual_seed(3))
    tok, logp, slogp = chooser(logits.clone(), _mask(biases))
    exact = _softmax_allowed(row, bias, temperature)
    assert bool(torch.isfinite(bias[tok]).all())  # only allowed tokens
    torch.testing.assert_close(slogp.double(), exact.log()[tok], atol=1e-5, rtol=0)
    torch.testing.assert_close(logp.double(), _softmax_allowed(row, bias).log()[tok], atol=1e-5, rtol=0)
    counts = torch.bincount(tok, minlength=V).double()
    if V == 7:
        keep = exact > 0
        chi2 = float(((counts - n * exact)[keep] ** 2 / (n * exact[keep])).sum())
        dof = int(keep.sum()) - 1
        assert chi2 < dof + 5 * math.sqrt(2 * dof), chi2
    else:  # many tokens: compare the frequencies of probability deciles with their mass
        order = exact.argsort()
        for part in order[exact[order] > 0].chunk(10):
            p = float(exact[part].sum())
            assert abs(float(counts[part].sum()) / n - p) <= 4.5 * math.sqrt(p * (1 - p) / n), p


def test_chooser_never_draws_a_masked_token_at_the_edges_of_the_uniforms():
    V = 300
    logits = torch.randn(2, V)
    bias = torch.zeros(2, V)
    bias[:, 250:] = float("-inf")  # the last blocks have no mass at all
    bias[:, :5] = float("-inf")
    for u in (0.0, 1.0 - 2 ** -53):
        chooser = _Chooser(2, V, "cpu", False, 1.0, 1.0, None)
        chooser._rand = lambda u=u: torch.full((2,), u, dtype=torch.float64)
        tok, _, slogp = chooser(logits.clone(), _mask(bias))
        assert bool(torch.isfinite(bias.gather(1, tok[:, None])).all()), (u, tok)
        assert bool(torch.isfinite(slogp).all())
        expect = 5 if u == 0.0 else 249
        assert tok.tolist() == [expect, expect]


@pytest.mark.parametrize("top_p", [0.3, 0.97])
def test_chooser_nucleus_is_the_smallest_top_set_reaching_top_p(top_p):
    """Top-p draws only from the nucleus (sorted only as far as needed: 0.97 of a flat row over 2000
    tokens needs more than the first top-64), with the renormalised probabilities."""
    torch.manual_seed(1)
    n, V = 20000, 2000
    row = torch.randn(V) * 0.5
    bias = torch.zeros(V)
    bias[::7] = float("-inf")
    chooser = _Chooser(n, V, "cpu", False, 1.0, top_p, torch.Generator().manual_seed(4))
    tok, logp, slogp = chooser(row.expand(n, V).clone(), _mask(bias).expand(n, V).clone())
    p = _softmax_allowed(row, bias)
    torch.testing.assert_close(logp.double(), p.log()[tok], atol=1e-5, rtol=0)  # the whole allowed set, not the nucleus
    sp, order = p.sort(descending=True)
    keep = order[(sp.cumsum(0) - sp) <= top_p]
    nucleus = torch.zeros(V, dtype=torch.bool)
    nucleus[keep] = True
    assert int(nucleus.sum()) > (64 if top_p > 0.9 else 1)
    assert bool(nucleus[tok].all())
    q = torch.where(nucleus, p, 0.0)
    q = q / q.sum()
    torch.testing.assert_close(slogp.double(), q.log()[tok], atol=1e-5, rtol=0)
    counts = torch.bincount(tok, minlength=V).double()
    order = q.argsort()
    for part in order[q[order] > 0].chunk(10):
        m = float(q[part].sum())
        assert abs(float(counts[part].sum()) / n - m) <= 4.5 * math.sqrt(m * (1 - m) / n), m


def test_greedy_chooser_is_the_first_argmax_of_the_masked_logits():
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0], [5.0, 1.0, 1.0, 0.5]])
    bias = torch.tensor([[0.0, float("-inf"), 0.0, 0.0], [float("-inf"), 0.0, 0.0, 0.0]])
    tok, logp, slogp = _Chooser(2, 4, "cpu", True, 0.5, 0.1, None)(logits.clone(), _mask(bias))
    assert tok.tolist() == [2, 1]  # masked maxima skipped; ties go to the first; temperature/top-p ignored
    torch.testing.assert_close(logp, (logits + bias).log_softmax(-1)[[0, 1], [2, 1]])
    torch.testing.assert_close(slogp, logp)


@pytest.mark.parametrize("greedy,top_p,temperature", [(True, 1.0, 1.0), (False, 1.0, 1.0), (False, 0.9, 1.0),
                                                      (False, 1.0, 1.5), (False, 0.9, 0.7)])
def test_chooser_is_exact_when_a_masked_token_dwarfs_the_allowed_ones(greedy, top_p, temperature):
    """A blocked token 200 nats above all allowed ones (exp() of the allowed logits underflows next to
    it): the affected rows are redone against their allowed maximum — same draws, exact log-probs
    (the constrained one at temperature 1 too, when sampling at another temperature)."""
    torch.manual_seed(2)
    n, V = 4000, 50
    row = torch.randn(V)
    bias = torch.zeros(V)
    bias[[3, 17]] = float("-inf")
    logits = row.expand(n, V).clone()
    logits[: n // 2, 3] = 200.0  # half the rows: the masked token dwarfs everything
    chooser = _Chooser(n, V, "cpu", greedy, temperature, top_p, torch.Generator().manual_seed(5))
    tok, logp, slogp = chooser(logits.clone(), _mask(bias).expand(n, V).clone())
    assert bool(torch.isfinite(bias[tok]).all()) and bool(torch.isfinite(slogp).all())
    torch.testing.assert_close(logp.double(), _softmax_allowed(row, bias).log()[tok], atol=1e-5, rtol=0)
    exact = _softmax_allowed(row, bias, 1.0 if greedy else temperature)
    if greedy:
        assert tok.tolist() == [int(exact.argmax())] * n
        torch.testing.assert_close(slogp.double(), exact.log()[tok], atol=1e-5, rtol=0)
        return
    if top_p < 1.0:
        sp, order = exact.sort(descending=True)
        q = torch.zeros(V, dtype=torch.float64)
        keep = order[(sp.cumsum(0) - sp) <= top_p]
        q[keep] = exact[keep] / exact[keep].sum()
    else:
        q = exact
    torch.testing.assert_close(slogp.double(), q.log()[tok], atol=1e-5, rtol=0)
    for half in (tok[: n // 2], tok[n // 2:]):  # the redone rows draw from the same distribution
        counts = torch.bincount(half, minlength=V).double()
        keep = q > 0
        chi2 = float(((counts - len(half) * q)[keep] ** 2 / (len(half) * q[keep])).sum())
        dof = int(keep.sum()) - 1
        assert chi2 < dof + 5 * math.sqrt(2 * dof), chi2


@pytest.mark.parametrize("greedy,top_p,temperature", [(True, 1.0, 1.0), (False, 1.0, 1.0), (False, 1.0, 1.5),
                                                      (False, 0.8, 1.0), (False, 0.9, 0.7)])
@pytest.mark.parametrize("dwarf", [False, True])
def test_chooser_on_columns_draws_what_it_draws_on_the_vocabulary(greedy, top_p, temperature, dwarf):
    """Multi-token codes give the chooser the union of the rows' allowed tokens (plus padding) as
    columns: the same uniforms then pick the same tokens with the same log-probs as over the whole
    vocabulary, because the inverse CDF walks the vocabulary's blocks in token order and a left-out
    column has no mass. ``dwarf``: a blocked column 200 nats above the allowed ones (rows redone)."""
    torch.manual_seed(6)
    R, V = 3000, 1000
    logits = torch.randn(R, V) * 2
    pool = 4 + torch.randperm(V - 8)[:200]  # the tokens any row allows: a few each, some shared by many rows
    allowed = torch.zeros(R, V, dtype=torch.bool)
    allowed[:, pool] = torch.rand(R, len(pool)) < 0.02
    allowed[torch.arange(R), pool[torch.randint(0, len(pool), (R,))]] = True  # every row allows a token
    allowed[:, pool[0]] = torch.rand(R) < 0.5
    extra = torch.zeros(V, dtype=torch.bool)
    extra[[3, 998]] = True  # padding and other tokens no row allows at this position
    if dwarf:
        logits[: R // 2, 3] = 200.0  # in the columns, not allowed
    cols = (allowed.any(0) | extra).nonzero().squeeze(1)
    assert 100 < len(cols) < V // 2
    neg = torch.where(allowed, 0.0, -1.0)
    runs = []
    for c in (None, cols):
        chooser = _Chooser(R, V, "cpu", greedy, temperature, top_p, torch.Generator().manual_seed(9))
        z, m = (logits, neg) if c is None else (logits[:, c], neg[:, c])
        runs.append(chooser(z.clone(), m.clone(), c))
    (tok, logp, slogp), (tok_c, logp_c, slogp_c) = runs
    assert bool(allowed[torch.arange(R), tok_c].all())
    assert torch.equal(tok_c, tok)
    torch.testing.assert_close(logp_c, logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(slogp_c, slogp, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw", [{}, {"temperature": 1.3}, {"temperature": 0.8, "top_p": 0.7}])
def test_sampler_on_allowed_columns_equals_the_vocabulary_wide_sampler(kw, monkeypatch):
    """Title codes: the sampler's head and chooser on the allowed columns give the lists and
    log-probs of the same sampler over the whole vocabulary (the dense mask of ``ListMask.next``)."""
    pol = _arch_policy("title", "qwen2")
    prompts = [p for p in prompts_for(pol, "synthetic", 4) for _ in range(3)]
    runs = []
    for columns in (True, False):
        if not columns:
            monkeypatch.setattr(ListSampler, "_allowed", lambda self, lists: (None, lists.next()))
        for greedy in (False, True):
            runs.append(ListSampler(pol, k=4, batch_size=7, **kw).generate(
                prompts, greedy=greedy, generator=torch.Generator().manual_seed(4)))
    for cols, whole in zip(runs[:2], runs[2:]):
        check_lists(pol, cols, len(prompts), 4)
        for name in ("items", "tokens", "mask"):
            assert torch.equal(getattr(cols, name), getattr(whole, name)), name
        torch.testing.assert_close(cols.logp, whole.logp, atol=1e-5, rtol=0)
        torch.testing.assert_close(cols.sample_logp, whole.sample_logp, atol=1e-5, rtol=0)
