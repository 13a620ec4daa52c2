"""Item codecs: item id ↔ token sequence, prompts, and the prefix trie that constrains decoding.

- ``atomic``: one added token ``<i{id}>`` per item (fast; the tiny model's default).
- ``title``: the item's title in the model's tokenizer followed by an end-of-item token, so that
  codes are prefix-free (BIGRec-style). Titles that several items share get a ``#2``, ``#3`` …
  suffix (the item id is the identity; Video_Games has 52 shared titles).

For the ``tiny`` model the tokenizer is built here: a word-level vocabulary of item tokens
(``atomic``) or a BPE tokenizer trained on the catalogue's titles with the ``tokenizers`` library
(``title``); either is saved as a normal ``transformers`` tokenizer beside the weights. For a
``pretrained`` model its own tokenizer is used (``atomic`` adds the item tokens to it; ``title``
writes one title per line: each code is the title tokenised as it reads at the start of a line,
then the newline token, so that prompt + codes decode to the natural text
``…### Response:\\nTitle A\\nTitle B\\n`` and, for byte-level BPE tokenizers, equal the tokenizer's own
encoding of that text).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from blade.errors import DataError
from blade.io import write_json
from blade.model.config import BIGREC_TEMPLATE
from blade.model.trie import Trie

SPECIALS = ["[PAD]", "[BOS]", "[SEP]", "[EOI]"]


def unique_titles(items: pd.DataFrame) -> list[str]:
    """Titles with newlines flattened and ``#k`` suffixes on repeats, in item order."""
    seen: Counter = Counter()
    out = []
    for title in items["title"]:
        t = " ".join(str(title).split())
        seen[t] += 1
        out.append(t if seen[t] == 1 else f"{t} #{seen[t]}")
    return out


def tiny_tokenizer(kind: str, items: pd.DataFrame, vocab_size: int) -> PreTrainedTokenizerFast:
    if kind == "atomic":
        vocab = {s: i for i, s in enumerate(SPECIALS)}
        vocab.update({f"<i{int(i)}>": len(SPECIALS) + n for n, i in enumerate(items["item_id"])})
        tok = Tokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    else:
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
        tok.train_from_iterator(unique_titles(items), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]", sep_token="[SEP]")


class ItemCodec:
    """Maps items to codes and histories to prompts; owns the decoding trie."""

    def __init__(self, kind: str, item_ids: list[int], codes: list[list[int]], tokenizer, style: str,
                 template: str = BIGREC_TEMPLATE, titles: list[str] | None = None):
        self.kind, self.style, self.template = kind, style, template
        self.item_ids = [int(i) for i in item_ids]
        self.index = {i: n for n, i in enumerate(self.item_ids)}
        self.codes, self.tokenizer, self.titles = codes, tokenizer, titles
        self.trie = Trie.build(codes)

    @classmethod
    def build(cls, kind: str, items: pd.DataFrame, tokenizer, style: str, template: str = BIGREC_TEMPLATE) -> "ItemCodec":
        ids = items["item_id"].astype(int).tolist()
        titles = unique_titles(items)
        if kind == "atomic":
            names = [f"<i{i}>" for i in ids]
            if style == "pretrained":
                tokenizer.add_tokens(names)
            codes = [[t] for t in tokenizer.convert_tokens_to_ids(names)]
        elif kind == "title":
            if style == "tiny":
                end = tokenizer.convert_tokens_to_ids("[EOI]")
                enc = tokenizer(titles, add_special_tokens=False)["input_ids"]
            else:
                end, enc = _newline_id(tokenizer), _line_start_tokens(tokenizer, titles)
            codes = [c + [end] for c in enc]
            if any(end in c[:-1] for c in codes):
                raise DataError("an item title tokenises to the end-of-item token; clean the titles of newlines")
        else:
            raise ValueError(f"unknown codec kind {kind!r}; valid: atomic, title")
        return cls(kind, ids, codes, tokenizer, style, template, titles)

    # ---- prompts and targets -------------------------------------------------------------
    def prompt(self, history: list[int], k: int) -> list[int]:
        """Token ids of the prompt for a history (oldest first)."""
        if self.style == "tiny":
            body = [t for i in history for t in self.codes[self.index[int(i)]]]
            return [self.tokenizer.bos_token_id, *body, self.tokenizer.sep_token_id]
        names = (self.titles[self.index[int(i)]] for i in history)
        text = self.template.format(k=k, history=", ".join(f'"{t}"' for t in names))
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def list_tokens(self, items: list[int]) -> list[int]:
        return [t for i in items for t in self.codes[self.index[int(i)]]]

    @property
    def pad_id(self) -> int:
        """Filler id for padded positions. They are always masked out of attention and of every
        log-prob, so any id works; tokenizers without a pad token (Llama's) use EOS, or 0."""
        tok = self.tokenizer
        for tid in (tok.pad_token_id, tok.eos_token_id):
            if tid is not None:
                return tid
        return 0

    # ---- persistence ---------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.tokenizer.save_pretrained(directory)
        write_json(directory / "codec.json", {"kind": self.kind, "style": self.style, "template": self.template,
                                              "item_ids": self.item_ids, "codes": self.codes, "titles": self.titles})

    @classmethod
    def load(cls, directory: str | Path, tokenizer=None) -> "ItemCodec":
        from transformers import AutoTokenizer

        directory = Path(directory)
        meta = json.loads((directory / "codec.json").read_text())
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
        return cls(meta["kind"], meta["item_ids"], meta["codes"], tokenizer, meta["style"], meta["template"], meta["titles"])


def _newline_id(tokenizer) -> int:
    """The token that ends a line. SentencePiece tokenizers (Llama-2) encode a lone "\\n" as a
    word-start piece followed by the newline byte, so the last piece is the one that counts."""
    ids = tokenizer("\n", add_special_tokens=False)["input_ids"]
    if ids and tokenizer.decode(ids[-1:]) == "\n" and (len(ids) == 1 or not tokenizer.decode(ids[:-1]).strip()):
        return ids[-1]
    raise DataError(f"the tokenizer encodes a newline as {ids}, with no single newline token; the title codec "
                    "ends every item with one — use the atomic codec with this model")


def _line_start_tokens(tokenizer, titles: list[str]) -> list[list[int]]:
    """Each title's tokens as they read right after a newline (the start of a response line).

    Tokenising a title on its own is not enough: byte-level BPE marks a leading space on the first
    word and SentencePiece adds a word-start piece, and either would make the model write text it
    never reads that way. Encoding "\\n" + title and dropping the tokens of "\\n" gives the
    in-context tokens (the newline never merges with the following letters in these tokenizers;
    where it does, the title's own encoding is the fallback, still prefix-free with the end token).
    """
    anchor = tokenizer("\n", add_special_tokens=False)["input_ids"]
    enc = tokenizer(["\n" + t for t in titles], add_special_tokens=False)["input_ids"]
    alone = None
    out = []
    for n, ids in enumerate(enc):
        if ids[: len(anchor)] == anchor and len(ids) > len(anchor):
            out.append(ids[len(anchor):])
        else:
            alone = alone or tokenizer(titles, add_special_tokens=False)["input_ids"]
            out.append(alone[n])
    return out
