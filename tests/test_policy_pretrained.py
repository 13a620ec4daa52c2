"""The ``pretrained`` policy path end to end, on a tiny Qwen2 checkpoint + byte-level BPE tokenizer
saved with ``save_pretrained`` (the loading path of a hub model, without a download): the BIGRec
prompt and title codes, LoRA SFT for both codecs, adapter save/load, the base folder left alone,
constrained lists, ``blade recommend`` + ``evaluate``, full fine-tuning, and no remote code."""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from blade.data import PreparedData
from blade.model.codec import BIGREC_TEMPLATE, ItemCodec
from blade.model.policy import LoraOptions, Policy, PolicyConfig
from blade.model.reference import REFERENCE, frozen, reference_policy
from blade.sampling import ListSampler
from blade.eval.config import EvalConfig
from blade.train.config import SFTConfig
from blade.train.sft import train_sft
from tests.conftest import ROOT
from tests.helpers import save_tiny_pretrained, sentencepiece_style_tokenizer, small_dataset

TARGETS = ["q_proj", "v_proj"]
K = 5
SFT = SFTConfig(epochs=1, batch_size=32, lr=5e-3, warmup_steps=1, k=K, select_metric=f"ndcg@{K}")
ALL_VALID = EvalConfig(selection_rows=0, batch_size=64, ks=[K], k=K)
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The model is tiny: with several intra-op threads on a shared 2-core machine, thread
    hand-offs cost more than the arithmetic (≈5x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(data dir, items, base checkpoint dir). Two layers, so that left padding would show up as
    NaN keys/values in the second layer; the BPE is trained on the titles and the prompt text."""
    root = tmp_path_factory.mktemp("pretrained")
    data = small_dataset(root / "data")
    items = pd.read_parquet(data / "items.parquet")
    base = save_tiny_pretrained(root / "base", items["title"].tolist() + [BIGREC_TEMPLATE], vocab_size=800,
                                layers=2)
    return data, items, base


def _digest(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def _lora(base, codec) -> PolicyConfig:
    return PolicyConfig(kind="pretrained", path=str(base), codec=codec, device="cpu",
                        lora=LoraOptions(rank=4, alpha=8, dropout=0.0, targets=TARGETS))


def _batch(policy: Policy, frame: pd.DataFrame, n: int = 6):
    """Prompts of different lengths (left padding at work) and target lists of different lengths."""
    rows = frame.iloc[:n]
    prompts = [policy.codec.prompt(h, K) for h in rows["history"]]
    lists = [list(dict.fromkeys([t, *reversed(h)]))[: 1 + r % 3]  # 1-3 distinct items
             for r, (h, t) in enumerate(zip(rows["history"], rows["target"]))]
    conts = [policy.codec.list_tokens(lst) for lst in lists]
    assert len(set(map(len, prompts))) > 1 and len(set(map(len, conts))) > 1
    return prompts, conts


@torch.no_grad()
def _logprobs(policy: Policy, prompts, conts) -> torch.Tensor:
    policy.model.eval()
    logp, _ = policy.token_logprobs(prompts, conts)
    return logp


def _valid_lists(policy: Policy, frame: pd.DataFrame, catalogue: set[int]) -> np.ndarray:
    policy.model.eval()
    lists = ListSampler(policy, K, batch_size=16).generate([policy.codec.prompt(h, K) for h in frame["history"]],
                                                           greedy=True)
    items = lists.items.numpy()
    assert lists.invalid_rate == 0
    assert all(len(set(row)) == K and set(row) <= catalogue for row in items.tolist())
    return items


# ---------------------------------------------------------------- prompt and codes
def test_bigrec_prompt_and_title_codes_read_as_natural_text(setup):
    _, items, base = setup
    policy = Policy.build(_lora(base, "title"), items)
    codec, tok = policy.codec, policy.codec.tokenizer
    titles = items["title"].tolist()
    prompt = codec.prompt([0, 1, 2], K)
    expected = BIGREC_TEMPLATE.format(k=K, history=f'"{titles[0]}", "{titles[1]}", "{titles[2]}"')
    assert tok.decode(prompt) == expected
    assert "### Instruction:" in expected and "### Response:\n" in expected  # the BIGRec (Alpaca) layout
    # The list the model writes is one title per line, no leading spaces, each line ending the code;
    # prompt + codes are exactly the tokenizer's own encoding of that text (byte-level BPE).
    text = expected + f"{titles[5]}\n{titles[3]}\n"
    assert tok.decode(prompt + codec.list_tokens([5, 3])) == text
    assert tok(text, add_special_tokens=False)["input_ids"] == prompt + codec.list_tokens([5, 3])
    newline = tok.convert_tokens_to_ids("Ċ")
    assert all(code[-1] == newline and newline not in code[:-1] for code in codec.codes)
    assert codec.trie.count[0] == len(items)  # prefix-free: every item is a leaf of the trie


def test_title_codes_with_a_sentencepiece_style_tokenizer(setup):
    """Llama-2-style tokenizers encode a lone newline as two pieces and put a word-start piece in
    front of a title tokenised on its own; the codes are still the line-start tokens + newline."""
    _, items, _ = setup
    tok = sentencepiece_style_tokenizer(items["title"].tolist() + [BIGREC_TEMPLATE])
    assert tok.convert_ids_to_tokens(tok("\n", add_special_tokens=False)["input_ids"]) == ["▁", "<0x0A>"]
    codec = ItemCodec.build("title", items, tok, "pretrained")
    newline = tok.convert_tokens_to_ids("<0x0A>")
    assert all(code[-1] == newline and newline not in code[:-1] for code in codec.codes)
    assert all(not tok.convert_ids_to_tokens(code[0]).startswith("▁") for code in codec.codes)
    titles = items["title"].tolist()
    assert tok.decode(codec.list_tokens([4, 1])) == f"{titles[4]}\n{titles[1]}\n"
    prompt = codec.prompt([0], K)
    assert prompt[0] == tok.bos_token_id
    text = BIGREC_TEMPLATE.format(k=K, history=f'"{titles[0]}"') + f"{titles[4]}\n"
    assert tok.decode(prompt[1:] + codec.list_tokens([4])) == text


# ---------------------------------------------------------------- LoRA SFT, both codecs
@pytest.mark.parametrize("codec", ["title", "atomic"])
def test_lora_sft_saves_an_adapter_that_reloads_exactly(setup, tmp_path, monkeypatch, codec):
    data, items, base = setup
    before = _digest(base)
    saved = []
    real_save = Policy.save

    def spy(self, directory):  # keep the in-memory policy that train_sft writes to best/
        saved.append((self, directory))
        real_save(self, directory)

    monkeypatch.setattr(Policy, "save", spy)
    summary = train_sft(PreparedData.load(data), tmp_path / "sft", _lora(base, codec), SFT, seed=0, evaluation=ALL_VALID)
    assert summary["best_epoch"] == 1
    best = tmp_path / "sft" / "best"
    trained = next(p for p, d in saved if d == best)
    monkeypatch.undo()

    # best/ holds the adapter (safetensors), its config naming the base, and the tokenizer beside it
    files = {p.name for p in best.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "codec.json", "policy.json"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin", "adapter_model.bin"}
    assert json.loads((best / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    tensors = load_file(best / "adapter_model.safetensors")
    extra = {"embed_tokens", "lm_head"} if codec == "atomic" else set()
    # (peft stores a modules_to_save layer under the layer's own name, once; not the frozen base copy)
    assert all("lora_" in k or any(k.endswith(f".{m}.weight") for m in extra) for k in tensors), sorted(tensors)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in tensors.items())  # B starts at 0: it trained
    for m in extra:  # the item tokens' rows are trained and saved
        (key,) = [k for k in tensors if m in k]
        assert tensors[key].shape[0] == len(trained.codec.tokenizer)

    # only LoRA (and, for item tokens, the embedding and output layers) is trainable
    names = [n for n, p in trained.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or any(f"{m}.modules_to_save" in n for m in extra) for n in names), names
    assert {m for m in extra if any(m in n for n in names)} == extra
    assert _digest(base) == before  # the base checkpoint folder is untouched

    loaded = Policy.load(best)
    assert [n for n, p in loaded.model.named_parameters() if p.requires_grad] == names  # resumable as saved
    valid = pd.read_parquet(data / "valid.parquet")
    prompts, conts = _batch(trained, valid)
    assert loaded.codec.codes == trained.codec.codes
    if codec == "atomic":  # the item tokens were saved with the tokenizer beside the adapter
        assert loaded.codec.tokenizer.convert_tokens_to_ids([f"<i{i}>" for i in loaded.codec.item_ids]) == [
            c[0] for c in loaded.codec.codes]
    expect = _logprobs(trained, prompts, conts)
    assert torch.isfinite(expect).all()
    torch.testing.assert_close(_logprobs(loaded, prompts, conts), expect, rtol=0, atol=0)
    # left padding changes nothing: each row alone scores as in the batch
    for r in (0, 3):
        alone = _logprobs(loaded, prompts[r:r + 1], conts[r:r + 1])[0]
        torch.testing.assert_close(alone, expect[r, : len(conts[r])], rtol=1e-5, atol=1e-5)

    catalogue = set(items["item_id"].tolist())
    lists = _valid_lists(loaded, valid, catalogue)
    np.testing.assert_array_equal(lists, _valid_lists(trained, valid, catalogue))


def test_lora_sft_killed_after_an_epoch_resumes_to_the_same_result(setup, tmp_path, monkeypatch):
    """Resuming reloads the adapter (and the atomic codec's resized, trained embeddings) from the
    checkpoint and continues exactly as the run that was never interrupted."""
    import blade.train.sft as sft

    data, _, base = setup
    policy_cfg = _lora(base, "atomic")
    policy_cfg.lora.dropout = 0.1  # dropout draws from the RNG, which the checkpoint restores
    cfg = dataclasses.replace(SFT, epochs=2, patience=5)
    train_sft(PreparedData.load(data), tmp_path / "straight", policy_cfg, cfg, seed=0)

    real_save = sft.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt("killed after the first checkpoint")

    monkeypatch.setattr(sft, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_sft(PreparedData.load(data), tmp_path / "resumed", policy_cfg, cfg, seed=0)
    monkeypatch.undo()
    train_sft(PreparedData.load(data), tmp_path / "resumed", policy_cfg, cfg, seed=0)

    logs = [pd.read_parquet(tmp_path / run / "train_log.parquet").drop(columns="seconds")
            for run in ("straight", "resumed")]
    assert len(logs[0]) == 2
    pd.testing.assert_frame_equal(logs[0], logs[1][logs[0].columns])
    a, b = (load_file(tmp_path / run / "checkpoint" / "adapter_model.safetensors") for run in ("straight", "resumed"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.mark.slow
def test_cli_recommend_and_evaluate_from_a_lora_adapter(setup, tmp_path):
    data, _, base = setup
    cfg = SFTConfig(epochs=1, batch_size=64, lr=5e-3, warmup_steps=1, k=K, select_metric=f"ndcg@{K}")
    train_sft(PreparedData.load(data), tmp_path / "sft", _lora(base, "title"), cfg, seed=0, evaluation=EvalConfig(selection_rows=8, ks=[K], k=K))
    env = {**os.environ, "BLADE_TRACKING": "off", "OMP_NUM_THREADS": "1"}
    recs = tmp_path / "recs.jsonl"
    for args in (["recommend", "--data", str(data), "--split", "test", "--k", "10", "--model",
                  str(tmp_path / "sft" / "best"), "--device", "cpu", "--out", str(recs)],
                 ["evaluate", "--recs", str(recs), "--data", str(data), "--split", "test", "--ks", "5,10",
                  "--out", str(tmp_path / "eval")]):
        proc = subprocess.run([sys.executable, "-m", "blade.cli", *args], capture_output=True, text=True, cwd=ROOT,
                              env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    n_test = len(pd.read_parquet(data / "test.parquet"))
    lines = [json.loads(line) for line in recs.read_text().splitlines()]
    assert [rec["row"] for rec in lines] == list(range(n_test))
    assert all(len(set(rec["items"])) == 10 for rec in lines)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["invalid_rate"] == 0 and metrics["n_rows"] == n_test
    assert 0 <= metrics["ndcg@10"] <= 1


# ---------------------------------------------------------------- full fine-tuning
@pytest.mark.parametrize("codec", ["title", "atomic"])
def test_a_lora_reference_shares_the_model_and_scores_as_the_separately_loaded_sft_policy(setup, tmp_path, codec):
    """π_ref of a LoRA policy (blade/model/reference.py): the SFT adapter inside the policy's own
    model. Its log-probs equal a separately loaded frozen SFT policy's, the policy's log-probs and
    gradients are those of a step without the reference pass (dropout included: the reference pass
    runs in eval mode and draws nothing), and nothing of it is saved with the policy."""
    data, items, base = setup
    cfg = _lora(base, codec)
    cfg.lora.dropout = 0.2  # train mode must differ from eval mode
    torch.manual_seed(0)
    sft = Policy.build(cfg, items)
    with torch.no_grad():  # B starts at 0: an adapter that changes the outputs
        for n, p in sft.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.2)
    sft.save(tmp_path / "best")
    policy = Policy.load(tmp_path / "best")
    ref = reference_policy(policy, tmp_path / "best")
    separate = frozen(Policy.load(tmp_path / "best"))
    assert ref.model is policy.model and REFERENCE in policy.model.peft_config
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert trainable and not any(REFERENCE in n for n in trainable)
    with torch.no_grad():  # the policy moves away from SFT: its adapter and π_ref's now differ
        for n, p in policy.model.named_parameters():
            if p.requires_grad:  # LoRA (and, for item tokens, the trained embedding and head copies)
                p.add_(0.3 * torch.randn_like(p))
    prompts, conts = _batch(policy, pd.read_parquet(data / "valid.parquet"))

    def step(with_reference: bool):
        policy.model.train()
        policy.model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dropout masks
        logp, mask = policy.token_logprobs(prompts, conts, constrained=True)
        ref_logp = None
        if with_reference:
            with torch.no_grad():
                ref_logp, _ = ref.token_logprobs(prompts, conts, constrained=True)
        (logp.sum(-1).exp().sum() + (logp ** 2).sum()).backward()
        return logp.detach(), ref_logp, {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}

    logp, ref_logp, grads = step(True)
    logp0, _, grads0 = step(False)
    with torch.no_grad():
        want, _ = separate.token_logprobs(prompts, conts, constrained=True)
    torch.testing.assert_close(ref_logp, want, rtol=0, atol=1e-6)
    assert not torch.allclose(logp, ref_logp, atol=1e-3)  # it is π_ref's adapter that scored, not the policy's
    torch.testing.assert_close(logp, logp0, rtol=0, atol=0)
    assert grads.keys() == grads0.keys() == set(trainable)
    for n in grads:
        torch.testing.assert_close(grads[n], grads0[n], rtol=0, atol=0)
    assert policy.model.training and policy.model.active_adapter == "default"
    assert [n for n, p in policy.model.named_parameters() if p.requires_grad] == trainable

    policy.save(tmp_path / "again")  # the trained adapter alone, as before π_ref was loaded beside it
    assert {p.name for p in (tmp_path / "again").iterdir()} == {p.name for p in (tmp_path / "best").iterdir()}
    assert load_file(tmp_path / "again" / "adapter_model.safetensors").keys() == \
        load_file(tmp_path / "best" / "adapter_model.safetensors").keys()
    with pytest.raises(TypeError, match="save the policy"):
        ref.save(tmp_path / "ref")


@pytest.mark.parametrize("codec", ["title", "atomic"])
def test_full_finetuning_saves_whole_weights_that_reload(setup, tmp_path, codec):
    data, items, base = setup
    before = _digest(base)
    torch.manual_seed(0)
    policy = Policy.build(PolicyConfig(kind="pretrained", path=str(base), codec=codec, device="cpu"), items)
    assert all(p.requires_grad for p in policy.model.parameters())
    train = pd.read_parquet(data / "train.parquet")
    prompts, conts = _batch(policy, train)
    opt = torch.optim.AdamW(policy.model.parameters(), lr=1e-2)
    for _ in range(2):
        policy.model.train()
        logp, mask = policy.token_logprobs(prompts, conts)
        opt.zero_grad()
        (-(logp.sum() / mask.sum())).backward()
        opt.step()
    policy.save(tmp_path / "full")
    assert (tmp_path / "full" / "model.safetensors").is_file()
    assert not (tmp_path / "full" / "adapter_config.json").exists()
    loaded = Policy.load(tmp_path / "full")
    torch.testing.assert_close(_logprobs(loaded, prompts, conts), _logprobs(policy, prompts, conts), rtol=0, atol=0)
    _valid_lists(loaded, pd.read_parquet(data / "valid.parquet").iloc[:8], set(items["item_id"].tolist()))
    assert _digest(base) == before


# ---------------------------------------------------------------- tokenizers and remote code
def test_tokenizer_without_pad_token_and_tied_embeddings(setup, tmp_path):
    """Llama-style tokenizers have no pad token; small Qwen2.5/Llama-3.2 checkpoints tie the LM
    head to the embedding, which the atomic codec then resizes and trains as modules_to_save."""
    data, items, _ = setup
    base = save_tiny_pretrained(tmp_path / "base", items["title"].tolist() + [BIGREC_TEMPLATE], vocab_size=800,
                                layers=2, tie_embeddings=True, pad_token=False)
    valid = pd.read_parquet(data / "valid.parquet").iloc[:8]
    for codec in ("title", "atomic"):
        torch.manual_seed(0)
        policy = Policy.build(_lora(base, codec), items)
        assert policy.codec.tokenizer.pad_token_id is None
        assert policy.codec.pad_id == policy.codec.tokenizer.eos_token_id
        with torch.no_grad():  # stand-in for training: move every trainable weight
            for p in policy.model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.05)
        policy.save(tmp_path / codec)
        loaded = Policy.load(tmp_path / codec)
        if codec == "atomic":  # one trained matrix, tied as in the base, saved once
            for model in (policy.model, loaded.model):
                emb, head = model.get_input_embeddings(), model.get_output_embeddings()
                assert emb.modules_to_save["default"].weight is head.modules_to_save["default"].weight
            tensors = load_file(tmp_path / codec / "adapter_model.safetensors")
            emb_key, head_key = "base_model.model.model.embed_tokens.weight", "base_model.model.lm_head.weight"
            assert {k for k in tensors if "lora_" not in k} == {emb_key, head_key}  # no frozen base copies
            torch.testing.assert_close(tensors[emb_key], tensors[head_key], rtol=0, atol=0)
        prompts, conts = _batch(policy, valid)
        torch.testing.assert_close(_logprobs(loaded, prompts, conts), _logprobs(policy, prompts, conts), rtol=0, atol=0)
        _valid_lists(loaded, valid, set(items["item_id"].tolist()))


def test_remote_code_is_never_run(setup, tmp_path):
    """A checkpoint whose config asks for custom code (``auto_map``) is loaded with the library's
    own Qwen2 classes; the custom module would leave a marker file if it were ever imported."""
    _, items, _ = setup
    base = save_tiny_pretrained(tmp_path / "base", items["title"].tolist(), vocab_size=500)
    marker = tmp_path / "remote_code_ran"
    (base / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                  "from transformers import Qwen2ForCausalLM as EvilModel, Qwen2Config as EvilConfig\n"
                                  "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    for name, key, value in [("config.json", "auto_map", {"AutoConfig": "evil.EvilConfig",
                                                          "AutoModelForCausalLM": "evil.EvilModel"}),
                             ("tokenizer_config.json", "auto_map", {"AutoTokenizer": [None, "evil.EvilTokenizer"]})]:
        cfg = json.loads((base / name).read_text())
        cfg[key] = value
        (base / name).write_text(json.dumps(cfg))
    for codec in ("title", "atomic"):
        policy = Policy.build(_lora(base, codec), items)
        policy.save(tmp_path / codec)
        Policy.load(tmp_path / codec)
        full = Policy.build(PolicyConfig(kind="pretrained", path=str(base), codec=codec, device="cpu"), items)
        full.save(tmp_path / f"{codec}_full")
        Policy.load(tmp_path / f"{codec}_full")
    assert not marker.exists()
