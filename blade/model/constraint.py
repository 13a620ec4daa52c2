"""The list constraint: which token each row of a list may emit next, shared by the sampler
(blade/sampling.py), which draws lists under it, and the policy's constrained scoring
(``Policy.token_logprobs(..., constrained=True)``), which replays given lists under it — one mask
for both, so training scores every list under exactly the distribution the sampler draws it from:
the constrained list log-prob of docs/method.md (3.9), ``Σ_t [z_t(y_t) − logsumexp_{v∈A_t} z_t(v)]``.

The mask lives in :class:`ListMask`: an (R, V) tensor, 0 on allowed tokens and -1 elsewhere
(masked scores are ``logits + 1e30·mask``). For one-token codes (the atomic codec) it is kept across
steps and a listed item's token is set to -1; for multi-token codes each row keeps a copy of the
trie's per-node item counts (blade/model/trie.py), decrements the nodes on a listed item's path, and
the mask is rebuilt from the current nodes' edges at every step.
"""

from __future__ import annotations

import torch

BIG = 1e30  # the mask's scale: a blocked logit becomes x - 1e30, below every allowed one, exp() = 0


class TrieTables:
    """A codec's prefix trie on a device plus the lookups the mask needs (built once per sampler or
    scoring call; the trie itself is the codec's, never rebuilt). ``vocab``: the LM head's rows."""

    def __init__(self, codec, vocab: int, device: torch.device):
        dev = device
        self.trie = codec.trie.to(dev)
        self.item_ids = torch.tensor(codec.item_ids, dtype=torch.long, device=dev)
        self.vocab = vocab
        self.pad = codec.pad_id
        self.atomic = self.trie.depth == 1
        root_edges = slice(int(self.trie.ptr[0]), int(self.trie.ptr[1]))
        self.root_allowed = torch.zeros(self.vocab, dtype=torch.bool, device=dev)
        self.root_allowed[self.trie.child_token[root_edges]] = True
        if self.atomic:  # token → item index (-1 for tokens that are no item)
            self.tok_item = torch.full((self.vocab,), -1, dtype=torch.long, device=dev)
            self.tok_item[self.trie.child_token[root_edges]] = self.trie.leaf_item[self.trie.child_node[root_edges]]
            self.non_item_tokens = (~self.root_allowed).nonzero().squeeze(1)  # blocked at every position


class ListMask:
    """Which token each of R rows may emit next, step by step: the trie edges that lead to at least
    one item not yet in the row's list; a finished row emits padding only. The sampler advances it
    with the tokens it draws, :func:`mask_list_logits_` with the tokens of given lists — one mask for
    both, so training scores a list under the distribution it was sampled from.

    :meth:`next` gives the mask ``neg`` (R, V): 0 where allowed, -1 where not. One-token codes: one
    (R, V) tensor kept across steps, a listed item's token set to -1. Multi-token codes: each row's
    copy of the trie's per-node item counts (R, nodes), decremented along a listed item's path, and
    the mask rebuilt from the current nodes' edges at every step. ``items`` (R, k) collects the
    listed item indices (-1 where none yet)."""

    def __init__(self, tables: TrieTables, R: int, k: int):
        self.t, self.k = tables, k
        dev = tables.root_allowed.device
        self.rows = torch.arange(R, device=dev)
        self.n_done = torch.zeros(R, dtype=torch.long, device=dev)
        self.items = torch.full((R, k), -1, dtype=torch.long, device=dev)
        self.steps = 0
        if tables.atomic:  # every row lists one item per step
            self.neg = (tables.root_allowed.float() - 1.0).expand(R, tables.vocab).clone()
            self.active = torch.ones(R, dtype=torch.bool, device=dev)
            self._every_row = True
        else:
            self.node = torch.zeros(R, dtype=torch.long, device=dev)
            self.remaining = tables.trie.count.to(torch.int32).expand(R, -1).clone()  # (R, nodes)
            self.neg = torch.empty((R, tables.vocab), device=dev)

    def allowed_pairs(self, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Multi-token codes: what :meth:`next` allows, as (row (E,), token (E,)) pairs of the
        active rows, without the dense (R, V) mask; inactive rows get none. Advance with
        :meth:`advance` as after :meth:`next`."""
        t = self.t
        self.active = active
        er, e = t.trie.edges(self.node)
        ok = (self.remaining[er, t.trie.child_node[e]] > 0) & active[er]
        self._edges = er, e
        return er[ok], t.trie.child_token[e[ok]]

    def next(self, active: torch.Tensor | None = None) -> torch.Tensor:
        """The mask (R, V) for the next token. ``active`` (R,) bool: the rows still listing; None =
        the sampler's rule (atomic: every row, for exactly k steps; else rows with < k items)."""
        t = self.t
        if t.atomic:
            self._every_row = active is None
            if active is None:
                return self.neg
            self.active = active
            pad_only = torch.full_like(self.neg[0], -1.0)
            pad_only[t.pad] = 0.0
            return torch.where(active[:, None], self.neg, pad_only)
        self.active = self.n_done < self.k if active is None else active
        er, e = t.trie.edges(self.node)
        ok = (self.remaining[er, t.trie.child_node[e]] > 0) & self.active[er]
        self.neg.fill_(-1.0)
        self.neg[er[ok], t.trie.child_token[e[ok]]] = 0.0
        self.neg[~self.active, t.pad] = 0.0  # finished rows emit padding
        self._edges = er, e
        return self.neg

    def advance(self, tok: torch.Tensor) -> None:
        """Move every active row along its token (R,), as chosen under the last :meth:`next` mask."""
        t, active = self.t, self.active
        self.steps += 1
        if t.atomic:
            if self._every_row:  # the sampler: each row lists one item per step (no indexing by row)
                self.items[:, self.steps - 1] = t.tok_item[tok]
                self.neg[self.rows, tok] = -1.0
                self.n_done += 1
                return
            r = self.rows[active]
            self.items[r, self.n_done[r]] = t.tok_item[tok[r]]
            self.neg[r, tok[r]] = -1.0
            self.n_done += active
            return
        er, e = self._edges
        match = t.trie.child_token[e] == tok[er]
        child = torch.zeros_like(self.node)
        child[er[match]] = t.trie.child_node[e[match]]
        node = torch.where(active, child, self.node)
        leaf = active & (t.trie.leaf_item[node] >= 0)
        if leaf.any():
            lr = self.rows[leaf]
            item_ix = t.trie.leaf_item[node[lr]]
            self.items[lr, self.n_done[lr]] = item_ix
            path = t.trie.paths[item_ix]  # (M, L)
            valid = path >= 0
            self.remaining.index_put_((lr[:, None].expand_as(path)[valid], path[valid]),
                                      torch.tensor(-1, dtype=torch.int32, device=node.device), accumulate=True)
            self.n_done = self.n_done + leaf.long()
            node = torch.where(leaf, torch.zeros_like(node), node)
        self.node = node

    @property
    def finished(self) -> bool:
        """Every row has its k items (atomic: k steps taken, without a device sync)."""
        return self.steps >= self.k if self.t.atomic else not bool((self.n_done < self.k).any())


# ---- scoring given lists ---------------------------------------------------------------------
_REPLAY_ROWS = 512  # rows per replay chunk: bounds the (rows, trie nodes) item counts of multi-token codes


def mask_list_logits_(tables: TrieTables, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
    """Add the sampler's validity mask to teacher-forced logits, in place: afterwards
    ``log_softmax(logits)[target]`` is each token's constrained log-prob (docs/method.md (3.9)) —
    the softmax renormalised over the tokens :class:`ListMask` allows at that position, exactly as
    when the list is sampled. Positions after a row's end allow only padding (log-prob 0 there).

    logits (R, T, V) float32, position t predicting ``target[:, t]``; target (R, T) token ids;
    mask (R, T) bool, True on real tokens (a prefix of each row). Masked entries become ``-1e30``
    (what ``x - 1e30`` rounds to in float32: finite, zero probability, zero gradient), in one
    masked fill of the whole block: in-place writes into per-position slices of a tensor on the
    autograd graph would each copy the whole (R, T, V) block in the backward pass (CopySlices).
    Raises ValueError naming the row and position where a list is not a valid list (a token off
    the trie, or a repeated item)."""
    R, T, V = logits.shape
    if V != tables.vocab:
        raise ValueError(f"logits have {V} columns but the policy's LM head has {tables.vocab}")
    target, mask = target.to(logits.device), mask.to(logits.device)
    blocked = blocked_tokens(tables, target, mask)                                  # (R, T, V) bool
    bad = blocked.gather(2, target[..., None]).squeeze(2) & mask
    if bool(bad.any()):
        r, t = (int(x) for x in bad.nonzero()[0])
        _not_a_list(r, t, int(target[r, t]))
    logits.masked_fill_(blocked, -BIG)


def blocked_tokens(tables: TrieTables, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(R, T, V) bool: True where :class:`ListMask` blocks a token at each position of given lists
    (target (R, T), mask (R, T) a prefix of real tokens per row). One-token codes in closed form —
    the catalogue's tokens, less every token listed before the position; padding only after a
    row's end — which equals the sampler's step-by-step mask (tests/test_constraint.py); other codes
    replay :class:`ListMask` position by position."""
    R, T = target.shape
    V, dev = tables.vocab, target.device
    if tables.atomic:
        blocked = (~tables.root_allowed).expand(R, T, V).clone()
        earlier, later = torch.triu_indices(T, T, 1, device=dev)                    # (T(T-1)/2,) each
        rows = torch.arange(R, device=dev)[:, None]
        blocked[rows, later[None], target[:, earlier]] = True  # a listed token, at every later position
        ended = ~mask
        blocked.masked_fill_(ended[..., None], True)
        blocked[..., tables.pad].masked_fill_(ended, False)
        return blocked
    blocked = torch.empty((R, T, V), dtype=torch.bool, device=dev)
    for r0 in range(0, R, _REPLAY_ROWS):
        rows = slice(r0, min(r0 + _REPLAY_ROWS, R))
        lists = ListMask(tables, rows.stop - r0, T)
        for t in range(T):
            blocked[rows, t] = lists.next(mask[rows, t]) < 0
            lists.advance(target[rows, t])
    return blocked


def _not_a_list(r: int, t: int, tok: int) -> None:
    raise ValueError(f"list {r}: token {tok} at position {t} is not allowed there — the continuation is not a "
                     "list of distinct catalogue items in the codec's codes (policy.codec.list_tokens(items))")


def padded_lists(conts: list[list[int]], pad: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of tokens, right-padded with ``pad``: (target (R, T) long, mask (R, T) bool, True on real tokens)."""
    T = max(map(len, conts))
    # one tensor from padded Python rows: a tensor per row costs ~5 µs each, 256 rows per alignment step
    target = torch.tensor([list(c) + [pad] * (T - len(c)) for c in conts], dtype=torch.long)
    mask = torch.arange(T)[None] < torch.tensor([len(c) for c in conts])[:, None]
    return target.to(device), mask.to(device)


class AllowedTokens:
    """The tokens the list constraint allows at every real position of given lists, as sparse
    (position, token) pairs: multi-token codes allow a few of V tokens per position (Video_Games'
    titles under SmolLM2: 0.05% of the (R, T, V) entries), so the constrained log-prob needs the
    logits of those entries only (``Policy.token_logprobs``, ``allowed=``). It depends on the lists
    alone, not on θ: one replay per alignment step serves the policy, π_ref and any anchor.

    ``pos`` (E,) flat positions r·T + t, ascending; ``tok`` (E,) token ids; ``shape`` (R, T).
    Raises ValueError, naming the list and position, where a list is not a valid list."""

    def __init__(self, tables: TrieTables, target: torch.Tensor, mask: torch.Tensor):
        if tables.atomic:
            raise ValueError("AllowedTokens is for multi-token codes; one-token codes mask densely")
        R, T = target.shape
        dev = tables.item_ids.device
        target, mask = target.to(dev), mask.to(dev)
        pos, tok = [], []
        for r0 in range(0, R, _REPLAY_ROWS):
            rows = slice(r0, min(r0 + _REPLAY_ROWS, R))
            lists = ListMask(tables, rows.stop - r0, T)
            for t in range(T):
                er, et = lists.allowed_pairs(mask[rows, t])
                pos.append((er + r0) * T + t)
                tok.append(et)
                lists.advance(target[rows, t])
        self.shape = (R, T)
        pos, tok = torch.cat(pos), torch.cat(tok)
        order = torch.argsort(pos, stable=True)
        self.pos, self.tok = pos[order], tok[order]
        self._check(target, mask)

    def _check(self, target: torch.Tensor, mask: torch.Tensor) -> None:
        hit = torch.zeros(target.numel(), dtype=torch.bool, device=target.device)
        ok = self.tok == target.reshape(-1)[self.pos]
        hit[self.pos[ok]] = True
        bad = mask.reshape(-1) & ~hit
        if bool(bad.any()):
            flat = int(bad.nonzero()[0])
            _not_a_list(*divmod(flat, self.shape[1]), int(target.reshape(-1)[flat]))
