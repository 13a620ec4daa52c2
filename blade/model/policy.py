"""Policies: a ``transformers`` causal LM plus its item codec.

``tiny``: a small Qwen2- or Llama-architecture model built from a config and trained from scratch
(no download). ``pretrained``: any local path or hub id loaded with ``from_pretrained``
(``trust_remote_code`` off), optionally wrapped with LoRA (``peft``). Weights are saved with
``save_pretrained`` (safetensors) beside the tokenizer, the codec and the resolved config.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from blade.config import from_dict
from blade.io import write_json
from blade.model.codec import ItemCodec, tiny_tokenizer
from blade.model.constraint import AllowedTokens, TrieTables, mask_list_logits_, padded_lists
from blade.model.head import head_at, plain_linear
from blade.model.list_softmax import ListBlocks, atomic_head_logp, atomic_list_logp
from blade.model.config import LoraOptions, PolicyConfig  # noqa: F401 — re-exported: the policy's config
from blade.model.shared_prompt import SharedPromptForward
from blade.model.wrappers import is_peft, unwrap_peft  # noqa: F401 — re-exported


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Policy:
    # Constrained scoring of Llama/Qwen2-block models runs each distinct prompt once
    # (blade/model/shared_prompt.py); False forces the padded forward over every (prompt, list) row.
    share_prompts = True
    HEAD_CHUNK = 32 * 2**20  # logits per chunk of the prompt-sharing scorer's LM head (128 MiB in float32)

    def __init__(self, model, codec: ItemCodec, config: PolicyConfig):
        self.model, self.codec, self.config = model, codec, config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def vocab_size(self) -> int:
        """Rows of the LM head: the width of every logits row the constraint masks."""
        return self.model.get_output_embeddings().weight.shape[0]

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def build(cls, config: PolicyConfig, items: pd.DataFrame) -> "Policy":
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

        dtype = getattr(torch, config.dtype)
        if config.kind == "tiny":
            tokenizer = tiny_tokenizer(config.codec, items, config.title_vocab_size)
            codec = ItemCodec.build(config.codec, items, tokenizer, "tiny")
            cfg_cls = Qwen2Config if config.arch == "qwen2" else LlamaConfig
            model_cfg = cfg_cls(
                vocab_size=len(tokenizer), hidden_size=config.hidden, num_hidden_layers=config.layers,
                num_attention_heads=config.heads, num_key_value_heads=config.kv_heads,
                intermediate_size=config.intermediate, max_position_embeddings=config.max_positions,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=None,
                tie_word_embeddings=True,
            )
            model = AutoModelForCausalLM.from_config(model_cfg, dtype=dtype)
        else:
            if config.model:
                _require_converted(config)
            tokenizer = AutoTokenizer.from_pretrained(config.path, trust_remote_code=False)
            codec = ItemCodec.build(config.codec, items, tokenizer, "pretrained", config.template)
            model = AutoModelForCausalLM.from_pretrained(config.path, dtype=dtype, trust_remote_code=False)
            _fit_vocab(model, tokenizer)
            if config.lora is not None:
                model = _wrap_lora(model, config)
        return cls(model.to(resolve_device(config.device)), codec, config)

    def save(self, directory: str | Path) -> None:
        """Weights (LoRA: the adapter only, which names ``config.path`` as its base), tokenizer,
        codec and resolved config, all in ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if is_peft(self.model):
            # Decided here, not by peft's "auto" (which reads the base config, from the hub for a
            # hub id, at every save): the base embeddings go into the adapter only when they were
            # resized (their new rows are random, so the base folder cannot restore them) and are
            # not already saved whole as modules_to_save.
            base = self.model.get_base_model()
            layers = (base.get_input_embeddings(), base.get_output_embeddings())
            in_adapter = all(hasattr(m, "modules_to_save") for m in layers)  # peft's ModulesToSaveWrapper
            resized = not in_adapter and layers[0].num_embeddings != _base_vocab_size(self.config)
            # the trained adapter only: not π_ref's, which alignment loads beside it (blade/model/reference.py)
            self.model.save_pretrained(directory, safe_serialization=True, save_embedding_layers=resized,
                                       selected_adapters=[self.model.active_adapter])
        else:
            self.model.save_pretrained(directory, safe_serialization=True)
        self.codec.save(directory)
        write_json(directory / "policy.json", dataclasses.asdict(self.config))

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> "Policy":
        from transformers import AutoModelForCausalLM

        directory = Path(directory)
        config = from_dict(PolicyConfig, json.loads((directory / "policy.json").read_text()), str(directory / "policy.json"))
        if device:
            config.device = device
        dtype = getattr(torch, config.dtype)
        codec = ItemCodec.load(directory)
        if config.kind == "pretrained" and config.lora is not None:
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained(config.path, dtype=dtype, trust_remote_code=False)
            # the same shape as at save time; the adapter holds the new rows (as modules_to_save or
            # saved embedding layers), so no mean-resizing (costly on a real vocabulary, and it draws
            # from the global RNG)
            _fit_vocab(base, codec.tokenizer, mean_resizing=False)
            model = PeftModel.from_pretrained(base, directory, is_trainable=True)
        else:
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, trust_remote_code=False)
        return cls(model.to(resolve_device(config.device)), codec, config)

    # ---- scoring -------------------------------------------------------------------------
    def token_logprobs(self, prompts: list[list[int]], conts: list[list[int]], constrained: bool = False,
                       allowed: AllowedTokens | ListBlocks | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs of each continuation token given prompt and earlier tokens (with grad).

        Prompts are left-padded, continuations right-padded. Returns (logp (R, T), mask (R, T)),
        logp 0 on padding.

        ``constrained=False``: the model's own softmax over the whole vocabulary — SFT's token NLL
        (BIGRec's warm-up). ``constrained=True``: each token's softmax renormalised over the tokens
        the list sampler allows at that position (trie edges leading to items not yet listed), so
        ``logp.sum(-1)`` is the log-prob of the list under the distribution lists are drawn from,
        docs/method.md (3.9); every alignment loss, KL and ratio uses it. The continuations must
        then be lists of distinct items (``codec.list_tokens(items)``), else ValueError. One-token
        codes need no mask tensor: the constrained softmax is computed in cache-sized chunks of
        positions, fused with the LM head where the prompt is shared (blade/model/list_softmax.py).

        Llama/Qwen2-block models run each distinct prompt once (blade/model/shared_prompt.py).
        With a multi-token codec they then compute the logits of the allowed tokens only
        (:class:`AllowedTokens`: 0.05% of them for SmolLM2 on Video_Games' titles), the rest
        being masked anyway; ``allowed`` (from :meth:`allowed_tokens` of the same lists) saves
        the replay (one-token codes: the blocked tokens) when several policies score one batch.
        """
        if constrained and self._shares_prompts():
            # one pass per distinct prompt, lists attending to its keys/values (blade/model/shared_prompt.py)
            parts = SharedPromptForward(self.model)
            hidden, target, mask = parts.hidden(prompts, conts, self.codec.pad_id)   # (R, T, D)
            if self._sparse_head():
                if not isinstance(allowed, AllowedTokens):
                    allowed = AllowedTokens(self._tables(), target, mask)
                return self._sparse_head_logp(parts.head, hidden, target, mask, allowed), mask
            if self._fused_head():
                # one-token codes: head and constrained softmax fused, chunk by chunk (blade/model/list_softmax.py)
                blocks = allowed if isinstance(allowed, ListBlocks) else None
                return atomic_head_logp(self._tables(), hidden, parts.head, target, mask, blocks), mask
            return self._head_logp(parts.head, hidden, target, mask), mask
        pad = self.codec.pad_id
        P, T = max(map(len, prompts)), max(map(len, conts))
        R = len(prompts)
        ids = torch.full((R, P + T), pad, dtype=torch.long)
        attn = torch.zeros((R, P + T), dtype=torch.long)
        for r, (p, c) in enumerate(zip(prompts, conts)):
            ids[r, P - len(p): P] = torch.tensor(p)
            ids[r, P: P + len(c)] = torch.tensor(c)
            attn[r, P - len(p): P + len(c)] = 1
        ids, attn = ids.to(self.device), attn.to(self.device)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=T + 1).logits
        logits = logits[:, :-1].float()  # (R, T, V): position P-1+t predicts continuation token t
        target = ids[:, P:]
        mask = attn[:, P:].bool()
        if constrained:
            return self._constrained_logp(logits, target, mask)
        logp = -F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="none").view(R, T)
        return logp * mask, mask

    def _constrained_logp(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """logits (R, T, V) float32 → (constrained logp (R, T), mask): the sampler's mask added in
        place, then each target token's log-softmax (0 on padding); one-token codes in one fused
        function that needs no mask."""
        R, T, V = logits.shape
        tables = self._tables()
        if tables.atomic:  # one fused function: no (R, T, V) mask, one pass back (blade/model/list_softmax.py)
            return atomic_list_logp(tables, logits, target, mask), mask
        mask_list_logits_(tables, logits, target, mask)
        logp = -F.cross_entropy(logits.reshape(-1, V), target.reshape(-1), reduction="none").view(R, T)
        return logp * mask, mask

    def _tables(self) -> TrieTables:
        """The codec's trie tables on the policy's device, built once (read-only; 0.2 ms a build)."""
        cached = self.__dict__.get("_trie_tables")
        if cached is None or cached[0] != (self.device, self.vocab_size):
            cached = self.__dict__["_trie_tables"] = ((self.device, self.vocab_size),
                                                      TrieTables(self.codec, self.vocab_size, self.device))
        return cached[1]

    def _shares_prompts(self) -> bool:
        return self.share_prompts and SharedPromptForward.supports(self.model)

    def _sparse_head(self) -> bool:
        """Whether the prompt-sharing scorer computes allowed logits only: multi-token codes (one-
        token codes allow nearly every item token: the dense head is cheaper) and a plain linear head."""
        return self.codec.trie.depth > 1 and self._linear_head()

    def _fused_head(self) -> bool:
        """Whether the prompt-sharing scorer fuses the LM head with the constrained softmax: one-token
        codes and a plain linear head (blade/model/list_softmax.py)."""
        return self.codec.trie.depth == 1 and self._linear_head()

    def _linear_head(self) -> bool:
        """A plain ``Linear`` LM head (not LoRA's modules_to_save wrapper): the head shortcuts read its weight."""
        return plain_linear(unwrap_peft(self.model).lm_head)

    def allowed_tokens(self, conts: list[list[int]]) -> AllowedTokens | ListBlocks | None:
        """The constraint's allowed tokens of these lists, for :meth:`token_logprobs` ``allowed=``
        of every policy that scores them (one replay instead of one per policy), or None where
        that scorer does not read them: multi-token codes' allowed (position, token) pairs, one-
        token codes' blocked tokens per position (:class:`ListBlocks`, for the fused head)."""
        if not self._shares_prompts():
            return None
        if self._sparse_head():
            return AllowedTokens(self._tables(), *padded_lists(conts, self.codec.pad_id))
        if self._fused_head():
            tables = self._tables()
            return ListBlocks(tables, *padded_lists(conts, self.codec.pad_id, self.device), tables.vocab)
        return None

    def _sparse_head_logp(self, head, hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                          allowed: AllowedTokens) -> torch.Tensor:
        """Constrained logp (R, T) from final hidden states (R, T, D), the LM head's logits computed
        at the allowed entries only (docs/method.md (3.9): ``z(y_t) − logsumexp_{v∈A_t} z(v)``):
        the real positions (n) against the union of the batch's allowed tokens (U), the rest of
        that (n, U) block masked — a few thousand columns instead of the vocabulary."""
        R, T, D = hidden.shape
        if allowed.shape != (R, T):
            raise ValueError(f"allowed tokens of lists shaped {allowed.shape}, not these lists' {(R, T)}")
        dev = hidden.device
        real = mask.reshape(-1).nonzero().squeeze(1)                                   # (n,)
        at = torch.full((R * T,), -1, dtype=torch.long, device=dev)
        at[real] = torch.arange(len(real), device=dev)
        cols, col = torch.unique(allowed.tok.to(dev), return_inverse=True)              # (U,), (E,)
        z = head_at(head, hidden.reshape(R * T, D)[real], cols).float()                # (n, U)
        ok = torch.zeros(z.shape, dtype=torch.bool, device=dev)
        ok[at[allowed.pos.to(dev)], col] = True
        lse = torch.logsumexp(z.masked_fill(~ok, float("-inf")), -1)                   # (n,)
        hit = torch.searchsorted(cols, target.reshape(-1)[real])                       # allowed: in cols (checked)
        logp = z.gather(1, hit[:, None]).squeeze(1) - lse
        return torch.zeros(R * T, dtype=logp.dtype, device=dev).index_copy(0, real, logp).view(R, T)

    def _head_logp(self, head, hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Constrained logp (R, T) from final hidden states (R, T, D), the LM head applied to chunks
        of lists holding at most ``HEAD_CHUNK`` logits each. A real vocabulary's logits are the
        largest tensors of a step (SmolLM2, 32 lists of ~150 tokens: 236M floats, and as much
        again for their log-softmax and for their gradient), so with grad a chunk's logits are
        recomputed in the backward pass (``torch.utils.checkpoint``: one more head product per
        chunk) instead of kept; a batch that fits in one chunk (the tiny model's) is not."""
        R, T, _ = hidden.shape
        step = max(1, self.HEAD_CHUNK // (T * self.vocab_size))

        def chunk(h: torch.Tensor, tgt: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            return self._constrained_logp(head(h).float(), tgt, m)[0]

        if step >= R:
            return chunk(hidden, target, mask)
        from torch.utils.checkpoint import checkpoint

        keep = torch.is_grad_enabled() and hidden.requires_grad
        out = []
        for r in range(0, R, step):
            args = hidden[r:r + step], target[r:r + step], mask[r:r + step]
            out.append(checkpoint(chunk, *args, use_reentrant=False) if keep else chunk(*args))
        return torch.cat(out)


def _require_converted(config: PolicyConfig) -> None:
    from blade.errors import ConfigError
    from blade.model.base_models import install_hint, is_converted

    if not is_converted(config.path):
        raise ConfigError(f"policy.model {config.model!r}: no converted checkpoint at {config.path}; make it with "
                          f"`blade base-model --model {config.model}` (the DAG's base_model rule does), after "
                          f"{install_hint(config.model)}")


def _fit_vocab(model, tokenizer, mean_resizing: bool = True) -> None:
    """Grow the embeddings when the tokenizer has more tokens than the model has rows (the atomic
    codec's item tokens). Many checkpoints (Qwen2) already have spare rows; those are used as is."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=mean_resizing)


def _base_vocab_size(config: PolicyConfig) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(config.path, trust_remote_code=False).get_text_config().vocab_size


def _embedding_names(model) -> list[str]:
    """Module names (last component) of the input embedding and the LM head: ``embed_tokens`` and
    ``lm_head`` in Qwen2/Llama, ``wte`` in GPT-2 — read from the model, not assumed."""
    layers = [model.get_input_embeddings(), model.get_output_embeddings()]
    return [name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if any(mod is m for m in layers)]


def _wrap_lora(model, config: PolicyConfig):
    from peft import LoraConfig, get_peft_model

    lora = config.lora
    # Item tokens added by the atomic codec have fresh (or never-trained spare) embedding and
    # output rows that LoRA cannot reach: train both layers fully and save them in the adapter.
    # Where the checkpoint ties the LM head to the embedding (small Qwen2.5, Llama-3.2), the two
    # trained copies stay one tied matrix, as in the base architecture.
    extra = _embedding_names(model) if config.codec == "atomic" else None
    tied = model.get_input_embeddings().weight is model.get_output_embeddings().weight
    peft_cfg = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=lora.targets, modules_to_save=extra, task_type="CAUSAL_LM",
                          ensure_weight_tying=bool(extra) and tied)
    return get_peft_model(model, peft_cfg)
