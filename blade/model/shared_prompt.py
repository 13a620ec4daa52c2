"""The training forward with one prompt pass per context: the hidden states that score a batch of lists
when many of them share a prompt (an alignment step's G lists per context, an offline method's M
stored lists), for models made of Llama/Qwen2 decoder blocks.

``Policy.token_logprobs`` on a padded batch recomputes each context's prompt once per list and
computes every padding token; on a pretrained LLM the prompt is most of the tokens (Video_Games:
about 144 history-title tokens against about 142 for a list of 10 titles). Here:

1. the distinct prompts run once, packed (no padding computed), keeping every layer's keys and
   values (C, kv_heads, P, head_dim); the last layer runs its queries and MLP only at
   each prompt's last token, whose hidden state predicts every list's first token;
2. the lists run as one batch of continuation tokens (N, T-1) whose queries attend to their own
   context's prompt keys/values (gathered per list by ``index_select``, a copy of keys/values, not
   a recomputation of the prompt) and causally to their own earlier tokens. The last list token is
   never an input: nothing reads what it predicts.

The gradient reaches each prompt token's computation once per context (``index_select``'s
backward sums the G lists' contributions). The LM head is the caller's (``Policy``), applied in
chunks of lists so that a real vocabulary's (N, T, V) logits never exist at once. The log-probs
equal the padded forward's to float tolerance (different reduction orders: packed rows, shorter attention rows); tested, with their
gradients, in tests/test_shared_prompt.py.
"""

from __future__ import annotations

import torch

from blade.model.constraint import padded_lists
from blade.model.attention import attend
from blade.model.decoder import DecoderParts, distinct_rows


class SharedPromptForward(DecoderParts):
    def hidden(self, prompts: list[list[int]], conts: list[list[int]], pad: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(h (N, T, D), target (N, T), mask (N, T) bool) for N lists: ``h[r, t]``, the final
        (normed) hidden state the LM head turns into the logits that predict ``conts[r][t]`` given
        ``prompts[r]`` and ``conts[r][:t]``; mask is True on real tokens (continuations
        right-padded with ``pad``). The head is left to the caller, which can apply it in chunks."""
        dev = self.head.weight.device
        distinct, owner = distinct_rows(prompts)
        uniq = [list(prompts[i]) for i in distinct]
        owner_t = torch.tensor(owner, dtype=torch.long, device=dev)
        first, keys, values, prompt_ok = self._prompts(uniq, pad, dev)                # (C, D), per layer (C, KH, P, hd)
        target, mask = padded_lists(conts, pad, dev)                                   # (N, T)
        T = target.shape[1]
        head = first.index_select(0, owner_t)[:, None]                                 # (N, 1, D)
        if T == 1:
            return head, target, mask
        plen = prompt_ok.sum(-1).index_select(0, owner_t)                              # (N,)
        rest = self._continuations(target[:, :-1], owner_t, plen, keys, values, prompt_ok)  # (N, T-1, D)
        return torch.cat([head, rest], 1), target, mask

    def _prompts(self, prompts: list[list[int]], pad: int, dev: torch.device):
        """The distinct prompts, packed: the final hidden state at each one's last token (C, D) and every
        layer's keys and values (C, KH, P, hd), zero at the left padding; ``ok`` (C, P) marks real tokens."""
        hd, H, KH = self.hd, self.H, self.KH
        C, P = len(prompts), max(map(len, prompts))
        lens = torch.tensor([len(p) for p in prompts])
        ok = torch.arange(P) >= (P - lens)[:, None]                                    # left padding
        ids = torch.full((C, P), pad, dtype=torch.long)
        ids[ok] = torch.tensor([t for p in prompts for t in p], dtype=torch.long)
        ids, ok = ids.to(dev), ok.to(dev)
        flat = ok.view(-1).nonzero().squeeze(1)                                        # (Np,) real tokens
        last = ok.sum(-1).cumsum(0) - 1                                                # each prompt's last, packed
        x = self.body.embed_tokens(ids.view(-1)[flat])                                 # (Np, D)
        dt = x.dtype
        cos, sin = self._rotary(x, (ok.cumsum(-1) - 1).view(-1)[flat])
        pad_keys = torch.zeros((C, 1, 1, P), dtype=dt, device=dev).masked_fill_(~ok[:, None, None], float("-inf"))
        # padding queries see themselves only (finite, never read); real ones the real tokens up to them
        see = (torch.ones((P, P), dtype=torch.bool, device=dev).tril()[None] & ok[:, None, :]) \
            | torch.eye(P, dtype=torch.bool, device=dev)[None]
        full = torch.zeros((C, 1, P, P), dtype=dt, device=dev).masked_fill_(~see[:, None], float("-inf"))
        keys, values = [], []
        for i, blk in enumerate(self.layers):
            a = blk.self_attn
            h = self._norm(blk.input_layernorm, x)
            k = self._rope(a.k_proj(h).view(-1, KH, hd), cos, sin)
            v = a.v_proj(h).view(-1, KH, hd)
            kp = k.new_zeros((C * P, KH, hd)).index_copy(0, flat, k).view(C, P, KH, hd).transpose(1, 2)
            vp = v.new_zeros((C * P, KH, hd)).index_copy(0, flat, v).view(C, P, KH, hd).transpose(1, 2)
            keys.append(kp)
            values.append(vp)
            if i == len(self.layers) - 1:  # the lists read this layer's keys/values; the rest only at the last token
                q = self._rope(a.q_proj(h[last]).view(C, H, hd), cos[last], sin[last])
                o = attend(q.view(C, H, 1, hd), kp, vp, pad_keys, a.scaling)
                x = x[last] + a.o_proj(o.reshape(C, H * hd))
            else:
                q = self._rope(a.q_proj(h).view(-1, H, hd), cos, sin)
                qp = q.new_zeros((C * P, H, hd)).index_copy(0, flat, q).view(C, P, H, hd)
                o = attend(qp.transpose(1, 2), kp, vp, full, a.scaling)
                x = x + a.o_proj(o.transpose(1, 2).reshape(C * P, H * hd)[flat])
            x = x + blk.mlp(self._norm(blk.post_attention_layernorm, x))
        return self._norm(self.body.norm, x), keys, values, ok

    def _continuations(self, inputs: torch.Tensor, owner: torch.Tensor, plen: torch.Tensor, keys, values,
                       prompt_ok: torch.Tensor) -> torch.Tensor:
        """Final hidden states (N, S, D) after each of the lists' input tokens ``inputs`` (N, S), every list
        attending to its context's prompt keys/values (``owner`` (N,) indexes them) and causally
        to its own earlier tokens; positions continue after the prompt's ``plen`` (N,) tokens."""
        hd, H, KH = self.hd, self.H, self.KH
        N, S = inputs.shape
        dev = inputs.device
        x = self.body.embed_tokens(inputs)                                             # (N, S, D)
        dt = x.dtype
        cos, sin = self._rotary(x, (plen[:, None] + torch.arange(S, device=dev)[None]).view(-1))  # (N·S, 1, hd)
        P = prompt_ok.shape[1]
        allowed = torch.cat([prompt_ok.index_select(0, owner)[:, None, :].expand(N, S, P),
                             torch.ones((S, S), dtype=torch.bool, device=dev).tril()[None].expand(N, S, S)], -1)
        attn = torch.zeros((N, 1, S, P + S), dtype=dt, device=dev).masked_fill_(~allowed[:, None], float("-inf"))
        for i, blk in enumerate(self.layers):
            a = blk.self_attn
            h = self._norm(blk.input_layernorm, x)
            q = self._rope(a.q_proj(h).view(N * S, H, hd), cos, sin).view(N, S, H, hd).transpose(1, 2)
            k = self._rope(a.k_proj(h).view(N * S, KH, hd), cos, sin).view(N, S, KH, hd).transpose(1, 2)
            v = a.v_proj(h).view(N, S, KH, hd).transpose(1, 2)
            k = torch.cat([keys[i].index_select(0, owner), k], 2)                     # (N, KH, P + S, hd)
            v = torch.cat([values[i].index_select(0, owner), v], 2)
            o = attend(q, k, v, attn, a.scaling)
            x = x + a.o_proj(o.transpose(1, 2).reshape(N, S, H * hd))
            x = x + blk.mlp(self._norm(blk.post_attention_layernorm, x))
        return self._norm(self.body.norm, x)
