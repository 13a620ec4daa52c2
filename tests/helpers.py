"""Small builders shared by tests."""

from __future__ import annotations

from pathlib import Path

from blade.data import prepare

TINY_DATA = {"source": "synthetic", "params": {"n_users": 150, "n_items": 40, "n_genres": 3, "seed": 2}}
# Fewer, shorter users: for the tests that train a (tiny) pretrained LM with long natural-language prompts.
SMALL_DATA = {"source": "synthetic", "params": {"n_users": 40, "n_items": 24, "n_genres": 3, "min_len": 5,
                                                "max_len": 7, "seed": 3}}


def tiny_dataset(directory: Path) -> Path:
    if not (directory / "stats.json").is_file():
        prepare(TINY_DATA, directory)
    return directory


def small_dataset(directory: Path) -> Path:
    if not (directory / "stats.json").is_file():
        prepare(SMALL_DATA, directory)
    return directory


def save_tiny_pretrained(directory: Path, texts: list[str], vocab_size: int = 400, layers: int = 1,
                         tie_embeddings: bool = False, pad_token: bool = True) -> Path:
    """A small Qwen2 checkpoint + byte-level BPE tokenizer saved with save_pretrained: the same
    loading path as a hub model, without a download.

    ``tie_embeddings``: share the input embedding with ``lm_head`` (as the small Qwen2.5 and
    Llama-3.2 checkpoints do). ``pad_token=False``: a tokenizer without a pad token (as Llama's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts + ["\n", "### Response:\n"], trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                     pad_token="<|endoftext|>" if pad_token else None)
    cfg = Qwen2Config(vocab_size=len(hf_tok), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=2048,
                      eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id,
                      tie_word_embeddings=tie_embeddings)
    Qwen2ForCausalLM(cfg).save_pretrained(directory)
    hf_tok.save_pretrained(directory)
    return directory


def sentencepiece_style_tokenizer(texts: list[str], vocab_size: int = 800):
    """A tokenizer laid out like Llama-2's (converted SentencePiece): no pre-tokenizer, spaces as
    "▁" with one prepended, byte fallback for characters outside the vocabulary — so a lone "\\n"
    encodes as ["▁", "<0x0A>"] and every text starts with a word-start piece — and a BOS token."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", *byte_pieces],
                                  show_progress=False)
    tok.train_from_iterator([t.replace("\n", " ") for t in texts], trainer=trainer)  # "\n" only as a byte
    bos = ("<s>", tok.token_to_id("<s>"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[bos])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
