"""Small builders shared by tests."""

from __future__ import annotations

from pathlib import Path

from blade.data import prepare

TINY_DATA = {"source": "synthetic", "params": {"n_users": 150, "n_items": 40, "n_genres": 3, "seed": 2}}


def tiny_dataset(directory: Path) -> Path:
    if not (directory / "stats.json").is_file():
        prepare(TINY_DATA, directory)
    return directory


def save_tiny_pretrained(directory: Path, texts: list[str]) -> Path:
    """A small Qwen2 checkpoint + byte-level BPE tokenizer saved with save_pretrained: the same
    loading path as a hub model, without a download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts + ["\n", "### Response:\n"], trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    cfg = Qwen2Config(vocab_size=len(hf_tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=2048,
                      eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id)
    Qwen2ForCausalLM(cfg).save_pretrained(directory)
    hf_tok.save_pretrained(directory)
    return directory
