"""The list sampler: batched, KV-cached, trie-constrained generation of K distinct valid items.

This is the suite's hot path. Every decoding step runs one forward pass of the whole batch on the
cached keys/values and builds the validity mask with tensor operations — no Python callback per
row or token (the way BIGRec/D3 decode with ``prefix_allowed_tokens_fn``). A row's mask allows
exactly the trie edges that lead to at least one item not yet in its list, so invalid or repeated
items cannot be produced; the invalid-output rate is still measured and reported.

For one-token codes (the atomic codec) the mask is a dense (R, V) "not yet taken" table; for
multi-token codes each row keeps a copy of the trie's per-node item counts and decrements the
nodes on a listed item's path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from blade.model.policy import Policy


@dataclass
class Lists:
    items: torch.Tensor        # (R, K) item ids
    tokens: torch.Tensor       # (R, T) list tokens, padding after each row's end
    mask: torch.Tensor         # (R, T) bool, True on real tokens
    logp: torch.Tensor         # (R, T) the model's own log-prob of each token (temperature 1, no mask)
    sample_logp: torch.Tensor  # (R, T) log-prob under the constrained, tempered, top-p distribution
    invalid_rate: float        # share of list slots that are not distinct valid items (0 by construction)


def _top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (nucleus sampling)."""
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    probs = sorted_scores.softmax(-1)
    drop = probs.cumsum(-1) - probs > top_p  # the first token is always kept
    sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
    return torch.full_like(scores, float("-inf")).scatter(-1, order, sorted_scores)


class ListSampler:
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

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], greedy: bool = False, generator: torch.Generator | None = None) -> Lists:
        parts = [self._generate(prompts[s:s + self.batch_size], greedy, generator)
                 for s in range(0, len(prompts), self.batch_size)]
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
        pad = self.policy.codec.pad_id
        R, P = len(prompts), max(map(len, prompts))
        ids = torch.full((R, P), pad, dtype=torch.long)
        attn = torch.zeros((R, P), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding: every row's next token sits at column P
            ids[r, P - len(p):] = torch.tensor(p)
            attn[r, P - len(p):] = 1
        ids, attn = ids.to(dev), attn.to(dev)
        pos = attn.sum(-1, keepdim=True) - 1  # (R, 1) position of each row's last token
        out = model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0),
                    use_cache=True, logits_to_keep=1)
        past, logits = out.past_key_values, out.logits[:, -1].float()  # (R, V)

        rows = torch.arange(R, device=dev)
        node = torch.zeros(R, dtype=torch.long, device=dev)
        n_done = torch.zeros(R, dtype=torch.long, device=dev)
        items = torch.full((R, K), -1, dtype=torch.long, device=dev)
        if self.atomic:
            taken = torch.zeros((R, self.vocab), dtype=torch.bool, device=dev)
        else:
            remaining = trie.count.to(torch.int32).expand(R, -1).clone()  # (R, N)
        toks, logps, slogps, masks = [], [], [], []
        for _ in range(K * trie.depth):
            active = n_done < K
            # ---- validity mask (R, V) ---------------------------------------------------
            if self.atomic:
                allowed = self.root_allowed & ~taken
            else:
                er, e = trie.edges(node)
                ok = remaining[er, trie.child_node[e]] > 0
                allowed = torch.zeros((R, self.vocab), dtype=torch.bool, device=dev)
                allowed[er[ok], trie.child_token[e[ok]]] = True
            allowed[~active] = False
            allowed[~active, pad] = True  # finished rows emit padding
            # ---- choose -----------------------------------------------------------------
            raw_logp = logits.log_softmax(-1)
            scores = (logits / (1.0 if greedy else self.temperature)).masked_fill(~allowed, float("-inf"))
            if not greedy and self.top_p < 1.0:
                scores = _top_p_filter(scores, self.top_p)
            if greedy:
                tok = scores.argmax(-1)
            else:
                tok = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
            toks.append(tok)
            masks.append(active)
            logps.append(raw_logp.gather(1, tok[:, None]).squeeze(1).masked_fill(~active, 0.0))  # 0 on padding, as token_logprobs
            slogps.append(scores.log_softmax(-1).gather(1, tok[:, None]).squeeze(1))
            # ---- advance the trie ---------------------------------------------------------
            if self.atomic:
                child = torch.zeros_like(node)
                child_of_tok = self._atomic_child(tok)
                child[active] = child_of_tok[active]
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
                if self.atomic:
                    taken[lr, tok[lr]] = True
                else:
                    path = trie.paths[item_ix]  # (M, L)
                    valid = path >= 0
                    remaining.index_put_((lr[:, None].expand_as(path)[valid], path[valid]),
                                         torch.tensor(-1, dtype=torch.int32, device=dev), accumulate=True)
                n_done = n_done + leaf.long()
                node = torch.where(leaf, torch.zeros_like(node), node)
            if not (n_done < K).any():
                break
            # ---- one cached forward step --------------------------------------------------
            feed = torch.where(active, tok, torch.full_like(tok, pad))
            attn = torch.cat([attn, active.long()[:, None]], dim=1)
            pos = pos + active.long()[:, None]
            out = model(input_ids=feed[:, None], attention_mask=attn, position_ids=pos, past_key_values=past,
                        use_cache=True)
            past, logits = out.past_key_values, out.logits[:, -1].float()

        item_ids = torch.where(items >= 0, self.item_ids[items.clamp(min=0)], items)
        return Lists(item_ids.cpu(), torch.stack(toks, 1).cpu(), torch.stack(masks, 1).cpu(),
                     torch.stack(logps, 1).cpu(), torch.stack(slogps, 1).cpu(), invalid_rate(item_ids.cpu(), self.item_ids.cpu()))

    def _atomic_child(self, tok: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "_tok_to_child"):
            t = torch.zeros(self.vocab, dtype=torch.long, device=tok.device)
            e = slice(int(self.trie.ptr[0]), int(self.trie.ptr[1]))
            t[self.trie.child_token[e]] = self.trie.child_node[e]
            self._tok_to_child = t
        return self._tok_to_child[tok]


def invalid_rate(items: torch.Tensor, catalogue: torch.Tensor) -> float:
    """Share of (R, K) slots that are missing (-1), outside the catalogue, or repeat an earlier slot."""
    if items.numel() == 0:
        return 0.0
    bad = ~torch.isin(items, catalogue)
    sorted_items, _ = items.sort(dim=1)
    dup = torch.zeros_like(bad)
    dup[:, 1:] = (sorted_items[:, 1:] == sorted_items[:, :-1]) & torch.isin(sorted_items[:, 1:], catalogue)  # count each bad slot once
    return float((bad.sum() + dup.sum()).item()) / items.numel()
