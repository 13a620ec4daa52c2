"""The list sampler: batched, KV-cached, trie-constrained generation of K distinct valid items.

This is the suite's hot path. Every decoding step runs one forward pass of the whole batch on the
cached keys/values and builds the validity mask with tensor operations — no Python callback per
row or token (the way BIGRec/D3 decode with ``prefix_allowed_tokens_fn``). A row's mask allows
exactly the trie edges that lead to at least one item not yet in its list, so invalid or repeated
items cannot be produced; the invalid-output rate is still measured and reported.

The mask is an additive (R, V) bias, 0 on allowed tokens and -inf elsewhere. For one-token codes
(the atomic codec) it is kept across steps and a listed item's token is set to -inf; for
multi-token codes each row keeps a copy of the trie's per-node item counts, decrements the nodes on
a listed item's path, and the bias is rebuilt from the current nodes' edges at every step.

Choosing a token reads the logits a fixed, small number of times: one log-sum-exp of the raw
logits (for ``logp``), the bias added in place, then either the row maximum (greedy) or one
exponentiation followed by two-level inverse-CDF sampling (block sums, then one block), exact and
driven by the given ``torch.Generator``; nucleus (top-p) sampling sorts only the top of each row
(``topk``, widened until the nucleus fits). ``sample_logp`` comes from the same sums, so nothing
is normalised twice.

Models built from the Llama/Qwen2 decoder blocks (the tiny policies and most pretrained ones,
LoRA-wrapped or not) run through :class:`_LeanLM`: the model's own modules (norms, projections,
MLP, rotary embedding, LM head) with a preallocated KV cache and attention mask, a prefill that
skips padding and computes the last layer only where it is needed (its keys/values everywhere, the
rest at each row's last token), and decoding steps without the per-call mask construction and
cache concatenation of a generic ``forward``. Any other model runs through its own ``forward``
with a ``DynamicCache`` (:class:`_HFLM`); both give the same lists and log-probs (tested).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from blade.model.policy import Policy


@dataclass
class Lists:
    items: torch.Tensor        # (R, K) item ids
    tokens: torch.Tensor       # (R, T) list tokens, padding after each row's end
    mask: torch.Tensor         # (R, T) bool, True on real tokens
    logp: torch.Tensor         # (R, T) the model's own log-prob of each token (temperature 1, no mask)
    sample_logp: torch.Tensor  # (R, T) log-prob under the constrained, tempered, top-p distribution
    invalid_rate: float        # share of list slots that are not distinct valid items (0 by construction)


class ListSampler:
    # Run Llama/Qwen2-family models through the lean decoder; False forces the model's own forward.
    lean = True

    def __init__(self, policy: Policy, k: int, temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 64):
        n_items = len(policy.codec.item_ids)
        if not 1 <= k <= n_items:
            raise ValueError(f"list length k={k} must be between 1 and the catalogue size {n_items}")
        self.policy, self.k, self.temperature, self.top_p, self.batch_size = policy, k, temperature, top_p, batch_size
        dev = policy.device
        self.trie = policy.codec.trie.to(dev)
        self.item_ids = torch.tensor(policy.codec.item_ids, dtype=torch.long, device=dev)
        self.vocab = policy.model.get_output_embeddings().weight.shape[0]
        self.atomic = self.trie.depth == 1
        root_edges = slice(int(self.trie.ptr[0]), int(self.trie.ptr[1]))
        self.root_allowed = torch.zeros(self.vocab, dtype=torch.bool, device=dev)
        self.root_allowed[self.trie.child_token[root_edges]] = True
        if self.atomic:  # token → item index (-1 for tokens that are no item)
            self.tok_item = torch.full((self.vocab,), -1, dtype=torch.long, device=dev)
            self.tok_item[self.trie.child_token[root_edges]] = self.trie.leaf_item[self.trie.child_node[root_edges]]

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], greedy: bool = False, generator: torch.Generator | None = None) -> Lists:
        parts = [self._generate(prompts[s:s + self.batch_size], greedy, generator)
                 for s in range(0, len(prompts), self.batch_size)]
        if len(parts) == 1:
            return parts[0]
        T = max(p.tokens.shape[1] for p in parts)

        def cat(name, fill):
            return torch.cat([torch.nn.functional.pad(getattr(p, name), (0, T - getattr(p, name).shape[1]), value=fill)
                              for p in parts])

        n = sum(len(p.items) for p in parts)
        invalid = sum(p.invalid_rate * len(p.items) for p in parts) / max(n, 1)
        return Lists(torch.cat([p.items for p in parts]), cat("tokens", self.policy.codec.pad_id), cat("mask", False),
                     cat("logp", 0.0), cat("sample_logp", 0.0), invalid)

    def _generate(self, prompts: list[list[int]], greedy: bool, generator) -> Lists:
        model, trie, dev, K = self.policy.model, self.trie, self.policy.device, self.k
        pad, V = self.policy.codec.pad_id, self.vocab
        R, P = len(prompts), max(map(len, prompts))
        ids = torch.full((R, P), pad, dtype=torch.long)
        attn = torch.zeros((R, P), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding: every row's next token sits at column P
            ids[r, P - len(p):] = torch.tensor(p)
            attn[r, P - len(p):] = 1
        ids, attn = ids.to(dev), attn.to(dev)
        S = K * trie.depth  # most steps a list can take
        lm = (_LeanLM if self.lean and _LeanLM.supports(model) else _HFLM)(model, ids, attn, S)
        logits = lm.prefill()  # (R, V) float32
        choose = _Chooser(R, V, dev, greedy, self.temperature, self.top_p, generator)

        rows = torch.arange(R, device=dev)
        node = torch.zeros(R, dtype=torch.long, device=dev)
        n_done = torch.zeros(R, dtype=torch.long, device=dev)
        items = torch.full((R, K), -1, dtype=torch.long, device=dev)
        out_tok = torch.full((R, S), pad, dtype=torch.long, device=dev)
        out_mask = torch.zeros((R, S), dtype=torch.bool, device=dev)
        out_logp = torch.zeros((R, S), dtype=torch.float32, device=dev)
        out_slogp = torch.zeros((R, S), dtype=torch.float32, device=dev)
        if self.atomic:  # every row lists one item per step: all rows stay active for exactly K steps
            bias = torch.zeros(V, device=dev).masked_fill_(~self.root_allowed, float("-inf")).expand(R, V).clone()
            active = torch.ones(R, dtype=torch.bool, device=dev)
        else:
            remaining = trie.count.to(torch.int32).expand(R, -1).clone()  # (R, N)
            bias = torch.empty((R, V), device=dev)
        steps = 0
        for step in range(S):
            # ---- validity mask (R, V) ---------------------------------------------------
            if not self.atomic:
                active = n_done < K
                er, e = trie.edges(node)
                ok = (remaining[er, trie.child_node[e]] > 0) & active[er]
                bias.fill_(float("-inf"))
                bias[er[ok], trie.child_token[e[ok]]] = 0.0
                bias[~active, pad] = 0.0  # finished rows emit padding
            # ---- choose -----------------------------------------------------------------
            tok, logp, slogp = choose(logits, bias)
            out_tok[:, step] = tok
            out_mask[:, step] = active
            out_logp[:, step] = logp if self.atomic else logp.masked_fill(~active, 0.0)  # 0 on padding, as token_logprobs
            out_slogp[:, step] = slogp if self.atomic else slogp.masked_fill(~active, 0.0)
            steps = step + 1
            # ---- advance the trie ---------------------------------------------------------
            if self.atomic:
                items[:, step] = self.tok_item[tok]
                bias[rows, tok] = float("-inf")
                if step + 1 == K:
                    break
            else:
                match = trie.child_token[e] == tok[er]
                child = torch.zeros_like(node)
                child[er[match]] = trie.child_node[e[match]]
                node = torch.where(active, child, node)
                leaf = active & (trie.leaf_item[node] >= 0)
                if leaf.any():
                    lr = rows[leaf]
                    item_ix = trie.leaf_item[node[lr]]
                    items[lr, n_done[lr]] = item_ix
                    path = trie.paths[item_ix]  # (M, L)
                    valid = path >= 0
                    remaining.index_put_((lr[:, None].expand_as(path)[valid], path[valid]),
                                         torch.tensor(-1, dtype=torch.int32, device=dev), accumulate=True)
                    n_done = n_done + leaf.long()
                    node = torch.where(leaf, torch.zeros_like(node), node)
                if not (n_done < K).any():
                    break
            # ---- one cached forward step --------------------------------------------------
            logits = lm.step(tok if self.atomic else torch.where(active, tok, pad), active)

        item_ids = torch.where(items >= 0, self.item_ids[items.clamp(min=0)], items)
        return Lists(item_ids.cpu(), out_tok[:, :steps].cpu(), out_mask[:, :steps].cpu(), out_logp[:, :steps].cpu(),
                     out_slogp[:, :steps].cpu(), invalid_rate(item_ids.cpu(), self.item_ids.cpu()))


# ---- choosing a token ------------------------------------------------------------------------------
class _Chooser:
    """One token per row from (R, V) logits and an additive 0/-inf validity bias.

    Returns (token, the model's own log-prob of it (temperature 1, no mask), its log-prob under the
    distribution it was drawn from: masked, tempered, nucleus-truncated). Work buffers are allocated
    once per batch; the logits are overwritten."""

    def __init__(self, R: int, V: int, device, greedy: bool, temperature: float, top_p: float, generator):
        self.greedy, self.temperature, self.top_p, self.generator = greedy, temperature, top_p, generator
        self.R, self.V = R, V
        self.buf = torch.empty((R, V), device=device)
        self.tempered = None if greedy or temperature == 1.0 else torch.empty((R, V), device=device)
        if not greedy and top_p >= 1.0:
            # two-level inverse CDF: rows split into blocks of B tokens (zero-padded to a whole number)
            self.B = max(16, 1 << round(math.log2(math.sqrt(V))))
            self.nb = -(-V // self.B)
            self.pbuf = torch.zeros((R, self.nb * self.B), device=device)
        self.rows = torch.arange(R, device=device)

    def _lse(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """log Σ exp(x) per row, given the row maxima ``m`` (finite)."""
        torch.sub(x, m[:, None], out=self.buf)
        return m + self.buf.exp_().sum(-1).log()

    def _rand(self) -> torch.Tensor:
        return torch.rand(self.R, dtype=torch.float64, device=self.rows.device, generator=self.generator)

    def __call__(self, logits: torch.Tensor, bias: torch.Tensor):
        lse_raw = self._lse(logits, logits.amax(-1))
        scores = logits.add_(bias)  # allowed entries keep their raw logit exactly (x + 0)
        if self.greedy:
            best, tok = scores.max(-1)  # the first maximum, as argmax
            return tok, best - lse_raw, best - self._lse(scores, best)
        t = scores if self.tempered is None else torch.div(scores, self.temperature, out=self.tempered)
        m = t.amax(-1)
        if self.top_p < 1.0:
            p = torch.sub(t, m[:, None], out=self.buf).exp_()  # unnormalised probabilities, 0 where masked
            tok, log_mass = self._nucleus(p)
        else:
            p = torch.sub(t, m[:, None], out=self.pbuf[:, :self.V]).exp_()
            tok, log_mass = self._inverse_cdf()
        raw = scores.gather(1, tok[:, None]).squeeze(1)
        return tok, raw - lse_raw, t.gather(1, tok[:, None]).squeeze(1) - m - log_mass

    def _inverse_cdf(self):
        """Draw from the unnormalised probabilities in ``pbuf``: a block by its mass, then a token
        inside it. Only tokens with positive mass can be drawn (also under rounding)."""
        blocks = self.pbuf.view(self.R, self.nb, self.B)
        cb = blocks.sum(-1).double().cumsum_(-1)  # (R, nb)
        total = cb[:, -1:]
        b = torch.searchsorted(cb, self._rand()[:, None] * total, right=True)
        b = torch.minimum(b, (cb < total).sum(-1, keepdim=True)).squeeze(1)  # never past the last block with mass
        cw = blocks[self.rows, b].double().cumsum_(-1)  # (R, B)
        inner = cw[:, -1:]
        j = torch.searchsorted(cw, self._rand()[:, None] * inner, right=True)
        j = torch.minimum(j, (cw < inner).sum(-1, keepdim=True)).squeeze(1)
        return b * self.B + j, total.squeeze(1).log().float()

    def _nucleus(self, p: torch.Tensor):
        """Top-p: keep the most likely tokens while the mass before them is at most ``top_p`` of the
        total (the first always), then draw from those. Sorts only the top ``k`` of each row,
        widening ``k`` until every row's nucleus ends inside it."""
        thr = self.top_p * p.sum(-1, dtype=torch.float64)[:, None]
        k = min(self.V, 64)
        while True:
            vals, idx = p.topk(k, -1)
            cum = vals.double().cumsum_(-1)
            if k == self.V or bool((cum[:, -1:] > thr).all()):
                break
            k = min(self.V, k * 8)
        n_keep = (cum - vals.double() <= thr).sum(-1, keepdim=True)  # ≥ 1
        kept = cum.gather(1, n_keep - 1)
        j = torch.searchsorted(cum, self._rand()[:, None] * kept, right=True)
        j = torch.minimum(j, n_keep - 1)
        return idx.gather(1, j).squeeze(1), kept.squeeze(1).log().float()


# ---- running the model ---------------------------------------------------------------------------
class _HFLM:
    """Any causal LM through its own ``forward`` and a ``DynamicCache``; the attention mask is one
    preallocated (R, P + steps) tensor, passed as a growing slice."""

    def __init__(self, model, ids: torch.Tensor, attn: torch.Tensor, n_new: int):
        R, P = ids.shape
        self.model, self.ids, self.L = model, ids, P
        self.attn = torch.zeros((R, P + n_new), dtype=torch.long, device=ids.device)
        self.attn[:, :P] = attn
        self.pos = attn.sum(-1) - 1  # (R,) position of each row's last token

    def prefill(self) -> torch.Tensor:
        attn = self.attn[:, :self.L]
        out = self.model(input_ids=self.ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0),
                         use_cache=True, logits_to_keep=1)
        self.past = out.past_key_values
        return out.logits[:, -1].float()

    def step(self, tok: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        self.attn[:, self.L] = active
        self.L += 1
        self.pos = self.pos + active
        out = self.model(input_ids=tok[:, None], attention_mask=self.attn[:, :self.L], position_ids=self.pos[:, None],
                         past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return out.logits[:, -1].float()


def _unwrap(model):
    return model.get_base_model() if hasattr(model, "peft_config") and hasattr(model, "get_base_model") else model


class _LeanLM:
    """Decoding for models made of Llama/Qwen2 decoder blocks, through the model's own modules
    (so LoRA layers, biases and the configured activation, norm and rotary embedding apply), with a
    preallocated KV cache (R, kv_heads, P + steps, head_dim) per layer and an additive attention mask.
    It computes what the model's ``forward`` computes: the attention and every projection are the
    same operations, on the same values (tested against ``forward`` and ``generate``)."""

    BLOCKS = {("Qwen2DecoderLayer", "Qwen2Attention"), ("LlamaDecoderLayer", "LlamaAttention")}

    @classmethod
    def supports(cls, model) -> bool:
        base = _unwrap(model)
        body = getattr(base, "model", None)
        layers = getattr(body, "layers", None)
        if not layers or not isinstance(getattr(base, "lm_head", None), torch.nn.Module) or any(
                not hasattr(body, n) for n in ("embed_tokens", "norm", "rotary_emb")):
            return False
        if any(t != "full_attention" for t in (getattr(base.config, "layer_types", None) or ())):
            return False  # sliding-window layers
        rope = sys.modules[type(layers[0].self_attn).__module__].__dict__.get("apply_rotary_pos_emb")
        return rope is not None and all((type(b).__name__, type(b.self_attn).__name__) in cls.BLOCKS for b in layers)

    def __init__(self, model, ids: torch.Tensor, attn: torch.Tensor, n_new: int):
        base = _unwrap(model)
        self.body, self.head, self.layers = base.model, base.lm_head, list(base.model.layers)
        a = self.layers[0].self_attn
        self.rope = sys.modules[type(a).__module__].apply_rotary_pos_emb
        self.hd = a.head_dim
        self.H, self.KH = base.config.num_attention_heads, base.config.num_key_value_heads
        self.ids, self.attn, self.n_new = ids, attn, n_new

    def prefill(self) -> torch.Tensor:
        ids, attn, hd, H, KH = self.ids, self.attn, self.hd, self.H, self.KH
        R, P = ids.shape
        dev = ids.device
        valid = attn.bool()
        flat = valid.view(-1).nonzero().squeeze(1)  # real tokens, packed (N,); padding is never computed
        fr, fc = flat // P, flat % P
        last = valid.sum(-1).cumsum(0) - 1  # each row's last token within the packed tokens
        x = self.body.embed_tokens(ids.view(-1)[flat])  # (N, D)
        dt = x.dtype
        cos, sin = self.body.rotary_emb(x, ((attn.cumsum(-1) - 1).view(-1)[flat])[None])
        cos, sin = cos[0], sin[0]  # (N, hd)
        L = P + self.n_new
        self.k = [torch.zeros((R, KH, L, hd), dtype=dt, device=dev) for _ in self.layers]
        self.v = [torch.zeros((R, KH, L, hd), dtype=dt, device=dev) for _ in self.layers]
        self.mask = torch.full((R, L), float("-inf"), dtype=dt, device=dev)
        self.mask[:, :P].masked_fill_(valid, 0.0)
        self.L, self.pos = P, attn.sum(-1) - 1
        # padding queries see themselves only (finite, and never read); real ones the real tokens up to them
        see = (torch.ones((P, P), dtype=torch.bool, device=dev).tril()[None] & valid[:, None, :]) \
            | torch.eye(P, dtype=torch.bool, device=dev)[None]
        full = torch.zeros((R, 1, P, P), dtype=dt, device=dev).masked_fill_(~see[:, None], float("-inf"))
        for i, blk in enumerate(self.layers):
            a = blk.self_attn
            h = blk.input_layernorm(x)
            k, v = a.k_proj(h).view(-1, KH, hd), a.v_proj(h).view(-1, KH, hd)
            top = i == len(self.layers) - 1  # the last layer: keys/values everywhere, the rest at the last tokens
            q = a.q_proj(h[last] if top else h).view(-1, H, hd)
            if top:
                q = self.rope(q, q, cos[last], sin[last])[0]
                k = self.rope(k, k, cos, sin)[1]
            else:
                q, k = self.rope(q, k, cos, sin)
            self.k[i][fr, :, fc], self.v[i][fr, :, fc] = k, v  # padding stays zero
            kp, vp = self.k[i][:, :, :P], self.v[i][:, :, :P]
            if top:
                o = F.scaled_dot_product_attention(q.view(R, KH, H // KH, hd), kp, vp,
                                                   attn_mask=self.mask[:, None, None, :P], scale=a.scaling)
                x = x[last] + a.o_proj(o.reshape(R, H * hd))
            else:
                qp = torch.zeros((R * P, H, hd), dtype=dt, device=dev).index_copy_(0, flat, q).view(R, P, H, hd)
                o = F.scaled_dot_product_attention(qp.transpose(1, 2), kp, vp, attn_mask=full, scale=a.scaling,
                                                   enable_gqa=H != KH)
                x = x + a.o_proj(o.transpose(1, 2).reshape(R * P, H * hd)[flat])
            x = x + blk.mlp(blk.post_attention_layernorm(x))
        return self.head(self.body.norm(x)).float()

    def step(self, tok: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        R, L, hd, H, KH = tok.shape[0], self.L, self.hd, self.H, self.KH
        self.mask[:, L].masked_fill_(active, 0.0)
        self.pos = self.pos + active
        mask = self.mask[:, None, None, :L + 1]
        x = self.body.embed_tokens(tok)  # (R, D)
        cos, sin = self.body.rotary_emb(x, self.pos[None])
        cos, sin = cos[0], sin[0]
        for i, blk in enumerate(self.layers):
            a = blk.self_attn
            h = blk.input_layernorm(x)
            q, k = self.rope(a.q_proj(h).view(R, H, hd), a.k_proj(h).view(R, KH, hd), cos, sin)
            self.k[i][:, :, L] = k
            self.v[i][:, :, L] = a.v_proj(h).view(R, KH, hd)
            # one query per row: the query heads of a key/value head attend together (no repeat_kv)
            o = F.scaled_dot_product_attention(q.view(R, KH, H // KH, hd), self.k[i][:, :, :L + 1],
                                               self.v[i][:, :, :L + 1], attn_mask=mask, scale=a.scaling)
            x = x + a.o_proj(o.reshape(R, H * hd))
            x = x + blk.mlp(blk.post_attention_layernorm(x))
        self.L = L + 1
        return self.head(self.body.norm(x)).float()


def invalid_rate(items: torch.Tensor, catalogue: torch.Tensor) -> float:
    """Share of (R, K) slots that are missing (-1), outside the catalogue, or repeat an earlier slot."""
    if items.numel() == 0:
        return 0.0
    bad = ~torch.isin(items, catalogue)
    sorted_items, _ = items.sort(dim=1)
    dup = torch.zeros_like(bad)
    dup[:, 1:] = (sorted_items[:, 1:] == sorted_items[:, :-1]) & torch.isin(sorted_items[:, 1:], catalogue)  # count each bad slot once
    return float((bad.sum() + dup.sum()).item()) / items.numel()
