"""A prefix trie over item codes, stored as flat tensors so that decoding masks are tensor ops.

Nodes are numbered breadth-first from the root (0). Node ``n``'s outgoing edges are
``child_token[ptr[n]:ptr[n+1]]`` → ``child_node[ptr[n]:ptr[n+1]]`` (CSR layout). ``leaf_item[n]``
is the item index whose code ends at ``n`` (-1 for inner nodes); codes are prefix-free, so a leaf
has no children. ``count[n]`` is the number of items below ``n``: the sampler keeps a per-row copy
and decrements it along an item's path when the item is listed, so it never enters a subtree
whose items are all taken — distinct, valid items by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Trie:
    ptr: torch.Tensor         # (N+1,) long
    child_token: torch.Tensor  # (E,) long
    child_node: torch.Tensor   # (E,) long
    leaf_item: torch.Tensor    # (N,) long, -1 for inner nodes
    count: torch.Tensor        # (N,) long, items below each node
    paths: torch.Tensor        # (n_items, L) nodes on each item's path below the root, -1 padded
    depth: int                 # longest code length

    @classmethod
    def build(cls, codes: list[list[int]]) -> "Trie":
        children: list[dict[int, int]] = [{}]
        leaf: list[int] = [-1]
        paths: list[list[int]] = []
        for item, code in enumerate(codes):
            if not code:
                raise ValueError(f"item index {item} has an empty code")
            node, path = 0, []
            for tok in code:
                if leaf[node] >= 0:
                    raise ValueError(f"the code of item index {leaf[node]} is a prefix of item index {item}'s")
                nxt = children[node].get(tok)
                if nxt is None:
                    nxt = len(children)
                    children[node][tok] = nxt
                    children.append({})
                    leaf.append(-1)
                node = nxt
                path.append(node)
            if children[node] or leaf[node] >= 0:
                other = leaf[node] if leaf[node] >= 0 else "another item"
                raise ValueError(f"the code of item index {item} equals or prefixes the code of {other}")
            leaf[node] = item
            paths.append(path)
        # renumber breadth-first so that each node's edges are contiguous in CSR order
        order, queue = [0], [0]
        while queue:
            nxt_queue = []
            for n in queue:
                for tok in sorted(children[n]):
                    nxt_queue.append(children[n][tok])
            order.extend(nxt_queue)
            queue = nxt_queue
        new_id = {old: new for new, old in enumerate(order)}
        ptr, tok_list, node_list = [0], [], []
        for old in order:
            for tok in sorted(children[old]):
                tok_list.append(tok)
                node_list.append(new_id[children[old][tok]])
            ptr.append(len(tok_list))
        leaf_item = torch.full((len(order),), -1, dtype=torch.long)
        for old, item in enumerate(leaf):
            if item >= 0:
                leaf_item[new_id[old]] = item
        depth = max(len(p) for p in paths)
        path_t = torch.full((len(paths), depth), -1, dtype=torch.long)
        count = torch.zeros(len(order), dtype=torch.long)
        count[0] = len(paths)
        for i, p in enumerate(paths):
            ids = torch.tensor([new_id[n] for n in p])
            path_t[i, : len(p)] = ids
            count[ids] += 1
        return cls(torch.tensor(ptr), torch.tensor(tok_list, dtype=torch.long), torch.tensor(node_list, dtype=torch.long),
                   leaf_item, count, path_t, depth)

    def to(self, device: torch.device | str) -> "Trie":
        return Trie(*(getattr(self, f).to(device) for f in ("ptr", "child_token", "child_node", "leaf_item", "count", "paths")), self.depth)

    @property
    def n_nodes(self) -> int:
        return len(self.leaf_item)

    def edges(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flattened outgoing edges of ``nodes`` (R,): (row index (E',), edge index (E',))."""
        start, end = self.ptr[nodes], self.ptr[nodes + 1]
        lengths = end - start
        rows = torch.repeat_interleave(torch.arange(len(nodes), device=nodes.device), lengths)
        offsets = torch.cumsum(lengths, 0) - lengths  # first flat position of each row
        within = torch.arange(int(lengths.sum()), device=nodes.device) - offsets[rows]
        return rows, start[rows] + within
