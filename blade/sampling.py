"""The list sampler: batched, KV-cached, trie-constrained generation of K distinct valid items.

This is the suite's hot path. Every decoding step runs one forward pass of the whole batch on the
cached keys/values and builds the validity mask with tensor operations — no Python callback per
row or token (the way BIGRec/D3 decode with ``prefix_allowed_tokens_fn``). A row's mask allows
exactly the trie edges that lead to at least one item not yet in its list, so invalid or repeated
items cannot be produced; the invalid-output rate is still measured and reported.

The mask is :class:`blade.model.constraint.ListMask`; the same object replays given lists
(``mask_list_logits_``, behind ``Policy.token_logprobs(..., constrained=True)``), so training
scores every list under exactly the distribution the sampler draws it from — the constrained list
log-prob of docs/method.md (3.9).

Log-probs returned with the lists: ``logp`` is that constrained log-prob at temperature 1 without
top-p (the policy being trained), ``sample_logp`` the log-prob under the tempered, nucleus-truncated
constrained distribution the token was actually drawn from. Choosing a token reads the logits a
fixed, small number of times: one exponentiation (relative to the row maximum), multiplied by the
mask, gives the allowed mass (for ``logp``) and — at temperature 1 — the sampling weights; greedy
takes the first maximum of the masked scores, sampling is two-level inverse-CDF (block sums, then
one block), exact and driven by the given ``torch.Generator``; nucleus (top-p) sampling sorts only
the top of each row (``topk``, widened until the nucleus fits). Nothing is normalised twice, and
apart from the LM head's output no (R, V) tensor is allocated per step. Multi-token codes (titles)
allow a few tokens per row: there the LM head and the chooser work on the union of the rows'
allowed tokens only (a few hundred columns of a 49,152-token vocabulary), with the same draws as
over the whole vocabulary — the inverse CDF walks the vocabulary's blocks in token order either way.

Models built from the Llama/Qwen2 decoder blocks (the tiny policies and most pretrained ones,
LoRA-wrapped or not) run through :class:`_LeanLM`: the model's own modules (norms, projections,
MLP, rotary embedding, LM head) with a preallocated KV cache and attention mask, a prefill that
skips padding, runs repeated prompts (a rollout's group of lists per context) once and computes
the last layer only where it is needed (its keys/values everywhere, the rest at each row's last
token), and decoding steps without the per-call mask construction and cache concatenation of a
generic ``forward``. Any other model runs through its own ``forward``
with a ``DynamicCache`` (:class:`_HFLM`); both give the same lists and log-probs (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from blade.metrics import invalid_rate
from blade.model.constraint import BIG, ListMask, TrieTables
from blade.model.attention import attend
from blade.model.decoder import DecoderParts, distinct_rows
from blade.model.fast_exp import exp_
from blade.model.head import head_at, plain_linear
from blade.model.policy import Policy, unwrap_peft


@dataclass
class Lists:
    items: torch.Tensor        # (R, K) item ids
    tokens: torch.Tensor       # (R, T) list tokens, padding after each row's end
    mask: torch.Tensor         # (R, T) bool, True on real tokens
    logp: torch.Tensor         # (R, T) constrained log-prob of each token at temperature 1, no top-p (0 on padding)
    sample_logp: torch.Tensor  # (R, T) log-prob under the constrained, tempered, top-p distribution it was drawn from
    invalid_rate: float        # share of list slots that are not distinct valid items (0 by construction)


class ListSampler:
    # Run Llama/Qwen2-family models through the lean decoder; False forces the model's own forward.
    lean = True

    def __init__(self, policy: Policy, k: int, temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 64):
        n_items = len(policy.codec.item_ids)
        if not 1 <= k <= n_items:
            raise ValueError(f"list length k={k} must be between 1 and the catalogue size {n_items}")
        self.policy, self.k, self.temperature, self.top_p, self.batch_size = policy, k, temperature, top_p, batch_size
        self.tables = TrieTables(policy.codec, policy.vocab_size, policy.device)
        self._pad = torch.tensor(self.tables.pad, device=policy.device)  # looked up among each step's columns

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
        model, tables, dev, K = self.policy.model, self.tables, self.policy.device, self.k
        pad, V = tables.pad, tables.vocab
        R, P = len(prompts), max(map(len, prompts))
        lens = torch.tensor([len(p) for p in prompts])
        real = torch.arange(P) >= (P - lens)[:, None]  # left padding: every row's next token sits at column P
        ids = torch.full((R, P), pad, dtype=torch.long)
        ids[real] = torch.tensor([t for p in prompts for t in p], dtype=torch.long)
        ids, attn = ids.to(dev), real.long().to(dev)
        S = K * tables.trie.depth  # most steps a list can take
        lm = (_LeanLM if self.lean and _LeanLM.supports(model) else _HFLM)(model, ids, attn, S)
        lists = ListMask(tables, R, K)
        cols, neg = self._allowed(lists)
        logits = lm.prefill(cols)  # (R, V) float32, or (R, U) at the allowed columns
        choose = _Chooser(R, V, dev, greedy, self.temperature, self.top_p, generator)

        out_tok = torch.full((R, S), pad, dtype=torch.long, device=dev)
        out_mask = torch.zeros((R, S), dtype=torch.bool, device=dev)
        out_logp = torch.zeros((R, S), dtype=torch.float32, device=dev)
        out_slogp = torch.zeros((R, S), dtype=torch.float32, device=dev)
        steps = 0
        for step in range(S):
            active = lists.active
            # ---- choose -----------------------------------------------------------------
            tok, logp, slogp = choose(logits, neg, cols)
            out_tok[:, step] = tok
            out_mask[:, step] = active
            out_logp[:, step] = logp if tables.atomic else logp.masked_fill(~active, 0.0)  # 0 on padding, as token_logprobs
            out_slogp[:, step] = slogp if tables.atomic else slogp.masked_fill(~active, 0.0)
            steps = step + 1
            # ---- advance the trie, and the next step's validity mask ---------------------------
            lists.advance(tok)
            if lists.finished:
                break
            cols, neg = self._allowed(lists)
            # ---- one cached forward step --------------------------------------------------
            logits = lm.step(tok if tables.atomic else torch.where(active, tok, pad), active, cols)

        items = lists.items
        item_ids = torch.where(items >= 0, tables.item_ids[items.clamp(min=0)], items)
        out = [t[:, :steps].contiguous().cpu() for t in (out_tok, out_mask, out_logp, out_slogp)]
        return Lists(item_ids.cpu(), *out, invalid_rate(item_ids.cpu(), tables.item_ids.cpu(), per_row=False))

    def _allowed(self, lists: ListMask) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The next token's columns and validity mask: one-token codes (None, ``neg`` (R, V)) — nearly
        every item token is allowed; multi-token codes (``cols`` (U,) ascending, ``neg`` (R, U)): the
        union of the rows' allowed trie edges and padding, so the LM head and the chooser work on a
        few hundred columns instead of the vocabulary (Video_Games' titles under SmolLM2: at most
        about 450 of 49,152), with the same draws (:class:`_Chooser`)."""
        t = self.tables
        if t.atomic:
            return None, lists.next()
        active = lists.n_done < self.k
        er, et = lists.allowed_pairs(active)
        present = torch.zeros(t.vocab, dtype=torch.bool, device=et.device)
        present[et] = True
        present[t.pad] = True  # finished rows emit padding
        cols = present.nonzero().squeeze(1)
        neg = torch.full((len(active), len(cols)), -1.0, device=et.device)
        neg[er, torch.searchsorted(cols, et)] = 0.0
        neg[~active, torch.searchsorted(cols, self._pad)] = 0.0
        return cols, neg


# ---- choosing a token ------------------------------------------------------------------------------


class _Chooser:
    """One token per row from logits and the validity mask ``neg``: 0 where allowed, -1 where not
    (masked scores are ``logits + 1e30·neg``; masked probabilities ``e·(1 + neg)``). Both are
    (R, V) over the vocabulary, or (R, U) over ``cols`` (U,), ascending token ids that hold every
    allowed token (the sampler's multi-token codes): the draws are the same either way, because
    the inverse CDF walks the vocabulary's blocks in token order and a left-out column has no mass.

    Returns (token, its constrained log-prob at temperature 1 without top-p — the policy being
    trained —, its log-prob under the distribution it was drawn from: constrained, tempered,
    nucleus-truncated). One exponentiation of the logits, multiplied by the mask, gives the allowed
    mass (the constrained log-sum-exp) and, at temperature 1, the sampling weights themselves;
    rows whose allowed mass underflows next to the row's overall maximum (allowed logits all more
    than ~60 below it) are redone against their allowed maximum. The vocabulary's work buffers are
    allocated once per batch; the logits are overwritten."""

    def __init__(self, R: int, V: int, device, greedy: bool, temperature: float, top_p: float, generator):
        self.greedy, self.temperature, self.top_p, self.generator = greedy, temperature, top_p, generator
        self.R, self.V = R, V
        self.tempering = not greedy and temperature != 1.0
        # two-level inverse CDF: the vocabulary split into blocks of B tokens (zero-padded to a whole number)
        self.B = max(16, 1 << round(math.log2(math.sqrt(V))))
        self.nb = -(-V // self.B)
        self.e = torch.empty((R, self.nb * self.B), device=device)
        self.e[:, V:] = 0.0  # the padding of the last block; the rest is written at every step
        self.tempered = torch.empty((R, V), device=device) if self.tempering else None
        self.rows = torch.arange(R, device=device)
        self.within = torch.arange(self.B, device=device)

    def _rand(self) -> torch.Tensor:
        return torch.rand(self.R, dtype=torch.float64, device=self.rows.device, generator=self.generator)

    def __call__(self, logits: torch.Tensor, neg: torch.Tensor, cols: torch.Tensor | None = None):
        self.cols = cols
        if cols is None:
            e, tempered = self.e[:, :self.V], self.tempered
        else:  # (R, U) buffers, and where each block's columns start: block b is start[b]:start[b + 1]
            e = torch.empty_like(logits)
            tempered = torch.empty_like(logits) if self.tempering else None
            self.block = cols // self.B                                                 # (U,)
            self.start = torch.searchsorted(self.block, torch.arange(self.nb + 1, device=cols.device))
        self.w = e  # the weights drawn from, column by column
        m = logits.amax(-1)
        exp_(torch.sub(logits, m[:, None], out=e))
        e.addcmul_(e, neg)  # e·(1 + neg): the allowed tokens' weights relative to the row maximum
        if not self.tempering and not self.greedy:  # temperature 1: the weights are the sampling weights
            mass = self._nucleus if self.top_p < 1.0 else self._inverse_cdf
            col, log_total, log_kept = mass(logits, neg, m)  # rescued rows get their allowed maximum as base m
            raw = logits.gather(1, col[:, None]).squeeze(1) - m
            return self._token(col), raw - log_total, raw - log_kept
        lse = self._allowed_lse(e.sum(-1), logits, neg, m)  # constrained log-sum-exp at temperature 1
        if self.greedy:
            best, col = logits.add_(neg, alpha=BIG).max(-1)  # the first maximum of the masked scores, as argmax
            return self._token(col), best - lse, best - lse  # allowed entries keep their raw logit exactly (x + 0)
        t = torch.add(logits, neg, alpha=BIG, out=tempered).div_(self.temperature)
        base = t.amax(-1)
        exp_(torch.sub(t, base[:, None], out=e))
        mass = self._nucleus if self.top_p < 1.0 else self._inverse_cdf
        col, _, log_kept = mass(logits, neg, base)
        raw = logits.gather(1, col[:, None]).squeeze(1)
        return self._token(col), raw - lse, t.gather(1, col[:, None]).squeeze(1) - base - log_kept

    def _token(self, col: torch.Tensor) -> torch.Tensor:
        return col if self.cols is None else self.cols[col]

    @staticmethod
    def _allowed_lse(total: torch.Tensor, logits: torch.Tensor, neg: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """log Σ_allowed exp(logits) from ``total`` = Σ_allowed exp(logits - m); rows where it
        underflowed are recomputed against their allowed maximum."""
        lse = m + total.log()
        low = total < 1e-26
        if bool(low.any()):
            r = low.nonzero().squeeze(1)
            s = logits[r] + BIG * neg[r]
            best = s.amax(-1)
            lse[r] = best + exp_(s - best[:, None]).sum(-1).log()
        return lse

    def _rescue(self, total: torch.Tensor, logits: torch.Tensor, neg: torch.Tensor, base: torch.Tensor):
        """Rows whose weights underflowed (temperature 1 only): redo them relative to their allowed max."""
        low = total < 1e-26
        if self.tempering or not bool(low.any()):
            return None
        r = low.nonzero().squeeze(1)
        s = logits[r] + BIG * neg[r]
        base[r] = s.amax(-1)
        self.w[r] = exp_(s - base[r, None])
        return r

    def _block_sums(self, r: torch.Tensor | None = None) -> torch.Tensor:
        """(rows, nb) mass of every block of the vocabulary, of all rows or of rows ``r``."""
        if self.cols is None:
            blocks = self.e.view(self.R, self.nb, self.B)
            return (blocks if r is None else blocks[r]).sum(-1)
        w = self.w if r is None else self.w[r]
        return torch.zeros((len(w), self.nb), device=w.device).index_add_(1, self.block, w)

    def _block(self, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's weights in its block ``b`` (R,), in token order (R, ≤ B), and their first column."""
        if self.cols is None:
            return self.e.view(self.R, self.nb, self.B)[self.rows, b], b * self.B
        first, n = self.start[b], self.start[b + 1] - self.start[b]
        at = (first[:, None] + self.within).clamp_(max=self.w.shape[1] - 1)            # (R, B)
        return self.w.gather(1, at).masked_fill_(self.within >= n[:, None], 0.0), first

    def _inverse_cdf(self, logits, neg, base):
        """Draw from the weights: a block of the vocabulary by its mass, then a token inside it.
        Only tokens with positive weight can be drawn (also under rounding). Returns (column, log
        total mass, log drawn-from mass), both relative to ``base`` (the same here)."""
        bs = self._block_sums()  # (R, nb)
        r = self._rescue(bs.sum(-1), logits, neg, base)
        if r is not None:
            bs[r] = self._block_sums(r)
        cb = bs.double().cumsum_(-1)
        total = cb[:, -1:]
        b = torch.searchsorted(cb, self._rand()[:, None] * total, right=True)
        b = torch.minimum(b, (cb < total).sum(-1, keepdim=True)).squeeze(1)  # never past the last block with mass
        w, first = self._block(b)
        cw = w.double().cumsum_(-1)  # (R, B)
        inner = cw[:, -1:]
        j = torch.searchsorted(cw, self._rand()[:, None] * inner, right=True)
        j = torch.minimum(j, (cw < inner).sum(-1, keepdim=True)).squeeze(1)
        log_total = total.squeeze(1).log().float()
        return first + j, log_total, log_total

    def _nucleus(self, logits, neg, base):
        """Top-p: keep the most likely tokens while the mass before them is at most ``top_p`` of the
        total (the first always), then draw from those. Sorts only the top ``k`` of each row,
        widening ``k`` until every row's nucleus ends inside it. Returns (column, log total mass,
        log nucleus mass), relative to ``base``."""
        p = self.w
        n = p.shape[1]
        total = p.sum(-1, dtype=torch.float64)
        if self._rescue(total, logits, neg, base) is not None:
            total = p.sum(-1, dtype=torch.float64)
        thr = self.top_p * total[:, None]
        k = min(n, 64)
        while True:
            vals, idx = p.topk(k, -1)
            cum = vals.double().cumsum_(-1)
            if k == n or bool((cum[:, -1:] > thr).all()):
                break
            k = min(n, k * 8)
        n_keep = (cum - vals.double() <= thr).sum(-1, keepdim=True)  # ≥ 1
        kept = cum.gather(1, n_keep - 1)
        j = torch.searchsorted(cum, self._rand()[:, None] * kept, right=True)
        j = torch.minimum(j, n_keep - 1)
        return idx.gather(1, j).squeeze(1), total.log().float(), kept.squeeze(1).log().float()


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

    def prefill(self, cols: torch.Tensor | None = None) -> torch.Tensor:
        attn = self.attn[:, :self.L]
        out = self.model(input_ids=self.ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0),
                         use_cache=True, logits_to_keep=1)
        self.past = out.past_key_values
        return _columns(out.logits[:, -1].float(), cols)

    def step(self, tok: torch.Tensor, active: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
        self.attn[:, self.L] = active
        self.L += 1
        self.pos = self.pos + active
        out = self.model(input_ids=tok[:, None], attention_mask=self.attn[:, :self.L], position_ids=self.pos[:, None],
                         past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return _columns(out.logits[:, -1].float(), cols)


def _columns(logits: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
    return logits if cols is None else logits.index_select(1, cols)


class _LeanLM(DecoderParts):
    """Decoding for models made of Llama/Qwen2 decoder blocks, through the model's own modules
    (so LoRA layers, biases, the configured activation and rotary embedding apply), with a
    preallocated KV cache (R, kv_heads, P + steps, head_dim) per layer and an additive attention mask.
    It computes what the model's ``forward`` computes with the same operations
    (:class:`blade.model.decoder.DecoderParts`); tested against ``forward`` and ``generate``."""

    def __init__(self, model, ids: torch.Tensor, attn: torch.Tensor, n_new: int):
        super().__init__(model)
        self.ids, self.attn, self.n_new = ids, attn, n_new

    def prefill(self, cols: torch.Tensor | None = None) -> torch.Tensor:
        """Logits at every row's last prompt token (at columns ``cols`` only, where given); fills the
        cache. Repeated prompts (a rollout's group of lists per context) are computed once and their
        cache rows copied."""
        first, inverse = distinct_rows(torch.cat([self.ids, self.attn], 1).tolist())
        if len(first) == len(self.ids):
            return self._logits(self._prefill(self.ids, self.attn), cols)
        dev = self.ids.device
        first, inv = torch.tensor(first, device=dev), torch.tensor(inverse, device=dev)
        logits = self._logits(self._prefill(self.ids.index_select(0, first), self.attn.index_select(0, first)), cols)
        self.k = [c.index_select(0, inv) for c in self.k]
        self.v = [c.index_select(0, inv) for c in self.v]
        self.mask, self.pos = self.mask.index_select(0, inv), self.pos.index_select(0, inv)
        return logits.index_select(0, inv)

    def _prefill(self, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        hd, H, KH = self.hd, self.H, self.KH
        R, P = ids.shape
        dev = ids.device
        valid = attn.bool()
        flat = valid.view(-1).nonzero().squeeze(1)  # real tokens, packed (N,); padding is never computed
        fr, fc = flat // P, flat % P
        last = valid.sum(-1).cumsum(0) - 1  # each row's last token within the packed tokens
        x = self.body.embed_tokens(ids)[valid]  # (N, D)
        dt = x.dtype
        L = P + self.n_new
        # every position the prompt and a decoding step can reach, once: each looks its rows' (cos, sin) up
        self.rope = self._rotary(x, torch.arange(L, device=dev)) if self._static_rope() else None
        cos, sin = self._cos_sin(x, (attn.cumsum(-1) - 1).view(-1)[flat])
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
            h = self._norm(blk.input_layernorm, x)
            k = self._rope(a.k_proj(h).view(-1, KH, hd), cos, sin)
            self.k[i][fr, :, fc], self.v[i][fr, :, fc] = k, a.v_proj(h).view(-1, KH, hd)  # padding stays zero
            kp, vp = self.k[i][:, :, :P], self.v[i][:, :, :P]
            if i == len(self.layers) - 1:  # the last layer: keys/values everywhere, the rest at the last tokens
                q = self._rope(a.q_proj(h[last]).view(R, H, hd), cos[last], sin[last])
                o = attend(q.view(R, H, 1, hd), kp, vp, self.mask[:, None, None, :P], a.scaling)
                x = x[last] + a.o_proj(o.reshape(R, H * hd))
            else:
                q = self._rope(a.q_proj(h).view(-1, H, hd), cos, sin)
                qp = torch.zeros((R * P, H, hd), dtype=dt, device=dev).index_copy_(0, flat, q).view(R, P, H, hd)
                o = attend(qp.transpose(1, 2), kp, vp, full, a.scaling)
                x = x + a.o_proj(o.transpose(1, 2).reshape(R * P, H * hd)[flat])
            x = x + blk.mlp(self._norm(blk.post_attention_layernorm, x))
        return self._norm(self.body.norm, x)

    def _logits(self, h: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
        """float32 logits of final hidden states ``h`` (R, D): (R, V), or (R, U) at columns ``cols``
        — for a plain linear head, its product with those rows of the weight only (Video_Games'
        titles under SmolLM2: 16 rows against 450 of 49,152 head rows, 0.5 against 27 ms a step)."""
        if cols is None or not plain_linear(self.head):
            return _columns(self.head(h).float(), cols)
        return head_at(self.head, h, cols).float()

    def _cos_sin(self, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, ±sin) at positions ``pos``: from the prefill's table, or computed where it has none."""
        if self.rope is None:
            return self._rotary(x, pos)
        return self.rope[0].index_select(0, pos), self.rope[1].index_select(0, pos)

    def step(self, tok: torch.Tensor, active: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
        R, L, hd, H, KH = tok.shape[0], self.L, self.hd, self.H, self.KH
        self.mask[:, L].masked_fill_(active, 0.0)
        self.pos = self.pos + active
        mask = self.mask[:, None, None, :L + 1]
        x = self.body.embed_tokens(tok)  # (R, D)
        cos, sin = self._cos_sin(x, self.pos)
        for i, blk in enumerate(self.layers):
            a = blk.self_attn
            h = self._norm(blk.input_layernorm, x)
            q = self._rope(a.q_proj(h).view(R, H, hd), cos, sin)
            self.k[i][:, :, L] = self._rope(a.k_proj(h).view(R, KH, hd), cos, sin)
            self.v[i][:, :, L] = a.v_proj(h).view(R, KH, hd)
            o = attend(q.view(R, H, 1, hd), self.k[i][:, :, :L + 1], self.v[i][:, :, :L + 1], mask, a.scaling)
            x = x + a.o_proj(o.reshape(R, H * hd))
            x = x + blk.mlp(self._norm(blk.post_attention_layernorm, x))
        self.L = L + 1
        return self._logits(self._norm(self.body.norm, x), cols)
