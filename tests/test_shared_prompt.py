"""The prompt-sharing training forward (blade/model/shared_prompt.py): constrained list log-probs
and their gradients equal the padded per-list forward's (``Policy.share_prompts = False``), for
both codecs, Qwen2 and Llama blocks, LoRA adapters in training mode, groups of lists per context,
prompts of different lengths and lists of different lengths; and equal the sampler's own
log-probs of the lists it drew. Models that are not made of those blocks take the padded forward."""

from __future__ import annotations

import pytest
import torch

from blade.model.policy import Policy, PolicyConfig
from blade.model.shared_prompt import SharedPromptForward
from blade.sampling import ListSampler
from tests.test_sampling import HALO, HALO_HISTORIES, SYNTH, SYNTH_HISTORIES


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


def _build(codec: str, arch: str, items, lora: bool = False) -> Policy:
    torch.manual_seed(0)
    pol = Policy.build(PolicyConfig(codec=codec, arch=arch, layers=2, hidden=32, heads=4, kv_heads=2, intermediate=64,
                                    title_vocab_size=200, device="cpu"), items)
    with torch.no_grad():  # sharper logits: a distribution far from uniform
        pol.model.get_output_embeddings().weight.mul_(3.0)
    if lora:
        import peft

        cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "up_proj"],
                              lora_dropout=0.0, init_lora_weights=False)  # random adapters: they change the outputs
        pol.model = peft.get_peft_model(pol.model, cfg)
    return pol


def _scored(pol: Policy, prompts, conts, share: bool):
    """Constrained log-probs (R, T), mask and the gradients of a nonlinear function of them."""
    pol.share_prompts = share
    pol.model.train()
    pol.model.zero_grad(set_to_none=True)
    logp, mask = pol.token_logprobs(prompts, conts, constrained=True)
    (logp.sum(-1).exp().sum() + (logp ** 2).sum()).backward()
    grads = {n: p.grad.clone() for n, p in pol.model.named_parameters() if p.grad is not None}
    return logp.detach(), mask, grads


@pytest.mark.parametrize("codec,arch,lora,catalogue", [
    ("atomic", "qwen2", False, "synthetic"), ("title", "qwen2", False, "halo"), ("title", "llama", True, "synthetic"),
    ("atomic", "llama", True, "halo"),
])
def test_shared_prompt_logprobs_and_gradients_equal_the_per_list_forward(codec, arch, lora, catalogue):
    items, histories = (SYNTH, SYNTH_HISTORIES) if catalogue == "synthetic" else (HALO, HALO_HISTORIES)
    pol = _build(codec, arch, items, lora)
    assert SharedPromptForward.supports(pol.model)
    k, G = 3, 3
    # G lists per context (as an alignment step), contexts of different prompt lengths
    prompts = [pol.codec.prompt(h, k) for h in histories for _ in range(G)]
    pol.model.eval()
    lists = ListSampler(pol, k, batch_size=64).generate(prompts, generator=torch.Generator().manual_seed(1))
    conts = [t[m].tolist() for t, m in zip(lists.tokens, lists.mask)]
    if codec == "title":
        assert len({len(c) for c in conts}) > 1  # lists of different lengths: padding inside the batch
    shared, mask, g_shared = _scored(pol, prompts, conts, share=True)
    padded, mask_padded, g_padded = _scored(pol, prompts, conts, share=False)
    assert torch.equal(mask, mask_padded)
    # float32, different reduction orders (packed rows, shorter attention rows): about 1e-6 apart
    torch.testing.assert_close(shared, padded, atol=2e-5, rtol=0)
    torch.testing.assert_close(shared, lists.logp[:, :shared.shape[1]], atol=2e-5, rtol=0)  # the sampler's own
    assert g_shared.keys() == g_padded.keys() and g_shared
    for name in g_padded:
        scale = g_padded[name].abs().max().clamp(min=1e-6)
        assert (g_shared[name] - g_padded[name]).abs().max() / scale < 1e-4, name


def test_every_prompt_distinct_and_one_token_lists():
    """No sharing to exploit (SFT-like batches) and lists of one token (the head only) still agree."""
    pol = _build("atomic", "qwen2", SYNTH)
    prompts = [pol.codec.prompt(h, 1) for h in SYNTH_HISTORIES]
    conts = [pol.codec.list_tokens([SYNTH.item_id[(3 * r + 1) % len(SYNTH)]]) for r in range(len(prompts))]
    shared, _, g_shared = _scored(pol, prompts, conts, share=True)
    padded, _, g_padded = _scored(pol, prompts, conts, share=False)
    assert shared.shape == (len(prompts), 1)
    torch.testing.assert_close(shared, padded, atol=2e-5, rtol=0)
    for name in g_padded:
        torch.testing.assert_close(g_shared[name], g_padded[name], atol=1e-5, rtol=1e-4)


def test_other_models_take_the_padded_forward():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    assert not SharedPromptForward.supports(model)


@pytest.mark.parametrize("codec", ["atomic", "title"])
def test_the_head_in_checkpointed_chunks_gives_the_same_logprobs_and_gradients(codec, monkeypatch):
    """A real vocabulary's logits are applied a few lists at a time and recomputed in backward;
    forced here to one list per chunk, against the whole batch at once."""
    pol = _build(codec, "llama", SYNTH, lora=True)
    prompts = [pol.codec.prompt(h, 3) for h in SYNTH_HISTORIES[:6] for _ in range(2)]
    pol.model.eval()
    lists = ListSampler(pol, 3).generate(prompts, generator=torch.Generator().manual_seed(2))
    conts = [t[m].tolist() for t, m in zip(lists.tokens, lists.mask)]
    whole, _, g_whole = _scored(pol, prompts, conts, share=True)
    monkeypatch.setattr(Policy, "HEAD_CHUNK", 1)
    chunked, _, g_chunked = _scored(pol, prompts, conts, share=True)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
    for name in g_whole:  # summed over chunks in another order: float32 rounding, relative to the largest entry
        scale = g_whole[name].abs().max().clamp(min=1e-6)
        assert (g_chunked[name] - g_whole[name]).abs().max() / scale < 1e-4, name
    with torch.no_grad():  # no graph: plain chunks
        pol.share_prompts = True
        nograd, _ = pol.token_logprobs(prompts, conts, constrained=True)
    torch.testing.assert_close(nograd, whole, atol=1e-6, rtol=0)


def test_a_list_that_repeats_an_item_is_refused_naming_its_position():
    """The sparse allowed-token scorer checks the lists as the dense replay does: the same error,
    at the first token of the repeat that no unlisted item shares (titles share prefixes)."""
    pol = _build("title", "qwen2", SYNTH)
    item = int(SYNTH.item_id[4])
    conts = [pol.codec.list_tokens([int(SYNTH.item_id[1]), item]), pol.codec.list_tokens([item, item])]
    prompts = [pol.codec.prompt(h, 2) for h in SYNTH_HISTORIES[:2]]
    n = len(pol.codec.list_tokens([item]))
    messages = []
    for share in (True, False):
        pol.share_prompts = share
        with pytest.raises(ValueError, match=r"list 1: token \d+ at position (\d+) is not allowed") as err:
            pol.token_logprobs(prompts, conts, constrained=True)
        messages.append(str(err.value))
        assert (pol.allowed_tokens(conts[:1]) is not None) == share
    assert messages[0] == messages[1]
    at = int(messages[0].split("position ")[1].split()[0])
    assert n <= at < 2 * n
