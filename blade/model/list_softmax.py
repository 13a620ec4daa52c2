"""The constrained list log-prob of one-token codes (the atomic codec), as autograd functions:
docs/method.md (3.9), ``z_t(y_t) − logsumexp_{v∈A_t} z_t(v)``, where ``A_t`` is the catalogue's
tokens less every token listed before position t — what :class:`ListMask` allows the sampler there
(blade/model/constraint.py).

The general path (``mask_list_logits_``, then ``cross_entropy``) builds an (R, T, V) boolean block,
fills the logits with it, and its backward runs the log-softmax's and the fill's backward passes
over the whole block: a dozen passes over tensors far larger than a CPU's cache. Here the real
positions are taken in chunks of about ``CHUNK`` logits (0.5 MiB in float32, cache-resident):

- forward, per chunk: its logits — from the LM head (:func:`atomic_head_logp`: one product per
  chunk, the (R, T, V) logits never exist) or from given logits (:func:`atomic_list_logp`) —,
  ``e = exp(z − max)``, its blocked entries (a few columns, and at most T − 1 listed tokens per
  position) zeroed by index — no mask tensor —, its sum; only the max and the sum are kept;
- backward: ``grad_z = g · (onehot(y_t) − e / Σe)``, and from it the gradient of the hidden states
  and of the head (or of the given logits). Where the softmax of every position fits in ``KEEP``
  bytes (the tiny model's step: 10 MiB), the head's forward keeps it and its backward runs as two
  whole products over it, ``grad_z`` never formed (:func:`_head_grads_from_softmax`): forward +
  backward of a B 32 × G 8 step 8% faster than recomputing (alternating steps, one process,
  177 against 193 ms median). Above it (a real vocabulary: 2,560 positions × 50k tokens is
  0.5 GB), and always from given logits (the padded path, whose logits exist already), each chunk's
  logits and weights are recomputed and never kept. Blocked entries get exactly 0, as under the mask.

Positions whose allowed mass underflows next to a blocked maximum are redone against their allowed
maximum (the sampler's rescue, blade/sampling.py), so the result never depends on blocked logits.
Both equal the general path to float tolerance (different reduction order: tested, with their
gradients, in tests/test_list_softmax.py). Positions after a row's end score 0 with zero gradient,
as there (only padding is allowed there: log-prob 0).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from blade.model.constraint import TrieTables, _not_a_list
from blade.model.fast_exp import exp_

CHUNK = 2**17  # logits per chunk (0.5 MiB of float32): measured 2x faster than one pass over the block
KEEP = 64 * 2**20  # bytes: the largest softmax over all positions the forward keeps for the backward


def atomic_list_logp(tables: TrieTables, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
                     ) -> torch.Tensor:
    """logits (R, T, V) (position t predicting ``target[:, t]``), target (R, T) token ids, mask (R, T)
    bool (a prefix of real tokens per row) → constrained logp (R, T) float32, 0 on padding,
    differentiable in ``logits``. Raises ValueError naming the row and position where a list is
    not a list of distinct catalogue items."""
    R, T, V = logits.shape
    lists = ListBlocks(tables, target.to(logits.device), mask.to(logits.device), V)
    flat = logits.reshape(R * T, V)
    return lists.scatter(_GivenLogits.apply(flat, lists))


def atomic_head_logp(tables: TrieTables, hidden: torch.Tensor, head: torch.nn.Linear, target: torch.Tensor,
                     mask: torch.Tensor, blocks: ListBlocks | None = None) -> torch.Tensor:
    """The same from final hidden states (R, T, D) and a linear LM head, chunk by chunk: the (R, T, V)
    logits are never formed, in the forward or the backward pass. Differentiable in ``hidden`` and
    in the head's weight and bias. ``blocks``: these lists' :class:`ListBlocks`, built once for
    every policy that scores them (they depend on the lists only)."""
    R, T, D = hidden.shape
    if blocks is None:
        lists = ListBlocks(tables, target.to(hidden.device), mask.to(hidden.device), head.weight.shape[0])
    elif blocks.shape != (R, T) or head.weight.shape[0] != tables.vocab:
        raise ValueError(f"list blocks of lists shaped {blocks.shape} for a head of {head.weight.shape[0]} rows, "
                         f"not these lists' {(R, T)} and {tables.vocab} tokens")
    else:
        lists = blocks
    h = hidden.reshape(R * T, D).index_select(0, lists.real)                                # (n, D)
    if not torch.is_grad_enabled():  # no backward follows: no softmax kept (needs_input_grad would still say so)
        logp, _, _, _ = lists.forward(lambda lo, hi: _head(h[lo:hi], head.weight, head.bias))
        return lists.scatter(logp)
    return lists.scatter(_HeadLogits.apply(h, head.weight, head.bias, lists))


class ListBlocks:
    """The real positions of given lists (flat ``r·T + t``, ascending) and, at each, the tokens the
    constraint blocks beyond the non-item columns: every token listed earlier in its row. It
    depends on the lists alone, not on θ (``Policy.allowed_tokens``: one per alignment step)."""

    def __init__(self, tables: TrieTables, target: torch.Tensor, mask: torch.Tensor, vocab: int):
        if not tables.atomic:
            raise ValueError("atomic list log-probs are for one-token codes; other codes replay ListMask")
        if vocab != tables.vocab:
            raise ValueError(f"logits have {vocab} columns but the policy's LM head has {tables.vocab}")
        _check_lists(tables, target, mask)
        R, T = target.shape
        dev = target.device
        self.tables, self.shape = tables, (R, T)
        self.real = mask.reshape(-1).nonzero().squeeze(1)                                  # (n,)
        self.tok = target.reshape(-1).index_select(0, self.real)                           # (n,)
        at = torch.full((R * T,), -1, dtype=torch.long, device=dev)
        at[self.real] = torch.arange(len(self.real), device=dev)
        earlier, later = torch.triu_indices(T, T, 1, device=dev)                          # (T(T-1)/2,) each
        listed = mask[:, later]                                                            # (R, pairs): position real
        pos = at[(torch.arange(R, device=dev)[:, None] * T + later)[listed]]
        order = torch.argsort(pos, stable=True)
        self.block_pos, self.block_tok = pos[order], target[:, earlier][listed][order]      # (E,) each
        self.chunk = max(16, CHUNK // vocab)

    def chunks(self):
        n = len(self.real)
        starts = torch.arange(0, n, self.chunk)
        cut = torch.searchsorted(self.block_pos.cpu(), torch.cat([starts, torch.tensor([n])])).tolist()
        for i, lo in enumerate(starts.tolist()):
            yield lo, min(lo + self.chunk, n), slice(cut[i], cut[i + 1])

    def weights(self, z: torch.Tensor, lo: int, blocks: slice, base: torch.Tensor | None = None,
                scores: Callable[[], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Over a chunk's float32 logits z (c, V), in place: (e = exp(z − base), 0 where blocked;
        its row sums (c,); base (c,)). ``base`` None: each row's max, and rows whose allowed mass
        underflows redone against their allowed max, from ``scores()`` (the chunk's logits again)."""
        fresh = base is None
        if fresh:
            base = z.amax(-1)
        e = exp_(z.sub_(base[:, None]))
        e.index_fill_(1, self.tables.non_item_tokens, 0.0)
        e[self.block_pos[blocks] - lo, self.block_tok[blocks]] = 0.0
        total = e.sum(-1)
        low = total < 1e-30
        if fresh and bool(low.any()):  # rare: every allowed logit some 70 below a blocked one
            r = low.nonzero().squeeze(1)
            s = scores()[r]
            allowed = torch.zeros_like(e[r], dtype=torch.bool)
            allowed[:, self.tables.root_allowed] = True
            hit = (self.block_pos[blocks] - lo)[:, None] == r[None]                        # (E_c, n_low)
            b, j = hit.nonzero().unbind(1)
            allowed[j, self.block_tok[blocks][b]] = False
            s = s.masked_fill(~allowed, float("-inf"))
            best = s.amax(-1)
            e[r] = exp_(s - best[:, None])
            total[r], base[r] = e[r].sum(-1), best
        return e, total, base

    def keeps(self, grad: bool) -> bool:
        """Whether a forward that a backward will follow keeps the softmax (n, V) for it."""
        return grad and len(self.real) * self.tables.vocab * 4 <= KEEP

    def forward(self, logits: Callable[[int, int], torch.Tensor], keep: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(logp (n,), base (n,), total (n,), the softmax (n, V) if ``keep`` else None) from
        ``logits(lo, hi)``: a chunk's float32 logits, fresh."""
        n = len(self.real)
        dev = self.real.device
        logp, base, total = (torch.empty(n, device=dev) for _ in range(3))
        probs = torch.empty((n, self.tables.vocab), device=dev) if keep else None
        for lo, hi, blocks in self.chunks():
            z = logits(lo, hi)                                                             # (c, V)
            raw = z.gather(1, self.tok[lo:hi, None]).squeeze(1)
            e, total[lo:hi], base[lo:hi] = self.weights(z, lo, blocks, scores=lambda: logits(lo, hi))
            logp[lo:hi] = raw - base[lo:hi] - total[lo:hi].log()
            if keep:
                torch.div(e, total[lo:hi, None], out=probs[lo:hi])
        return logp, base, total, probs

    def backward(self, grad: torch.Tensor, base: torch.Tensor, total: torch.Tensor,
                 logits: Callable[[int, int], torch.Tensor], sink: Callable[[int, int, torch.Tensor], None]) -> None:
        """``sink(lo, hi, dz)`` with each chunk's logit gradient dz (c, V) = g·(onehot(y) − e/Σe),
        its weights recomputed (the forward kept no softmax)."""
        for lo, hi, blocks in self.chunks():
            e, _, _ = self.weights(logits(lo, hi), lo, blocks, base=base[lo:hi])
            g = grad[lo:hi]
            dz = e.mul_((-g / total[lo:hi])[:, None])
            dz[torch.arange(hi - lo, device=dz.device), self.tok[lo:hi]] += g
            sink(lo, hi, dz)

    def scatter(self, logp: torch.Tensor) -> torch.Tensor:
        """(n,) at the real positions → (R, T), 0 on padding (differentiable)."""
        R, T = self.shape
        return logp.new_zeros(R * T).index_copy(0, self.real, logp).view(R, T)


class _GivenLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, flat, lists):                                                         # flat (R·T, V)
        logp, base, total, _ = lists.forward(_given(flat, lists))  # the logits are there to recompute from
        ctx.lists = lists
        ctx.save_for_backward(flat, base, total)
        return logp

    @staticmethod
    def backward(ctx, grad):
        flat, base, total = ctx.saved_tensors
        lists = ctx.lists
        out = torch.zeros_like(flat)

        def sink(lo, hi, dz):
            out[lists.real[lo:hi]] = dz.to(out.dtype)

        lists.backward(grad, base, total, _given(flat, lists), sink)
        return out, None


class _HeadLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, lists):                                              # h (n, D), weight (V, D)
        keep = lists.keeps(any(ctx.needs_input_grad[:3]))
        logp, base, total, probs = lists.forward(lambda lo, hi: _head(h[lo:hi], weight, bias), keep)
        ctx.lists = lists
        ctx.save_for_backward(h, weight, bias, base, total, probs)
        return logp

    @staticmethod
    def backward(ctx, grad):
        h, weight, bias, base, total, probs = ctx.saved_tensors
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        dh = torch.empty_like(h) if want_h else None
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        db = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if want_b else None

        def sink(lo, hi, dz):                                                              # dz (c, V) float32
            if dh is not None:
                dh[lo:hi] = dz.to(h.dtype) @ weight
            if dw is not None:
                dw.addmm_(dz.T, h[lo:hi].float())
            if db is not None:
                db.add_(dz.sum(0))

        if probs is None:
            ctx.lists.backward(grad, base, total, lambda lo, hi: _head(h[lo:hi], weight, bias), sink)
        else:
            _head_grads_from_softmax(probs, grad, ctx.lists.tok, h, weight, dh, dw, db)
        return (dh, None if dw is None else dw.to(weight.dtype), None if db is None else db.to(weight.dtype), None)


def _head_grads_from_softmax(probs: torch.Tensor, g: torch.Tensor, tok: torch.Tensor, h: torch.Tensor,
                             weight: torch.Tensor, dh, dw, db) -> None:
    """The head's gradients from the kept softmax P (n, V), with dz = g·(onehot(y) − P) never formed
    (an (n, V) pass on its own costs as much as a product here): dh = g·(W[y] − P W),
    dW = onehot(y)ᵀ(g h) − Pᵀ(g h), db = Σ g·onehot(y) − Pᵀ g. Filled into dh, dw, db (None: not wanted)."""
    if dh is not None:
        w = weight.float()
        dh.copy_(g[:, None] * (w.index_select(0, tok) - probs @ w))
    if dw is not None or db is not None:
        gh = g[:, None] * h.float()                                                        # (n, D)
        if dw is not None:
            dw.addmm_(probs.T, gh, alpha=-1.0).index_add_(0, tok, gh)
        if db is not None:
            db.sub_(probs.T @ g).index_add_(0, tok, g)


def _given(flat: torch.Tensor, lists: ListBlocks) -> Callable[[int, int], torch.Tensor]:
    """A chunk's rows of given logits (R·T, V), as a fresh float32 copy (the chunk is overwritten)."""
    return lambda lo, hi: flat.index_select(0, lists.real[lo:hi]).float()


def _head(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A chunk's logits (c, V) in float32, computed in the head's dtype as ``Linear`` computes them."""
    return torch.nn.functional.linear(h, weight, bias).float()


def _check_lists(tables: TrieTables, target: torch.Tensor, mask: torch.Tensor) -> None:
    """Every real token an item token, none repeated within its row."""
    T = target.shape[1]
    earlier = torch.ones((T, T), dtype=torch.bool, device=target.device).tril(-1)          # (t, s): s < t
    repeat = ((target[:, :, None] == target[:, None, :]) & earlier).any(-1)              # (R, T)
    bad = mask & (~tables.root_allowed[target] | repeat)
    if bool(bad.any()):
        r, t = (int(x) for x in bad.nonzero()[0])
        _not_a_list(r, t, int(target[r, t]))
