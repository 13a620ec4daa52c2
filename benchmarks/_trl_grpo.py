"""TRL 1.16's ``GRPOTrainer`` on the benchmark's tiny model, one step per turn (used by
``bench_align_step.py``, which alternates its steps with ours).

How far TRL's public API constrains the lists, checked against TRL 1.16.0 / transformers 5:

- ``GRPOConfig.generation_kwargs`` only feeds a ``GenerationConfig``, which rejects
  ``logits_processor`` and ``prefix_allowed_tokens_fn`` ("not a valid argument of
  GenerationConfig") — the two hooks a catalogue constraint needs. Through it, static masks only:
  ``suppress_tokens`` keeps generation to item tokens (variant ``items``: repeats allowed), and
  ``no_repeat_ngram_size=1`` also bans repeats — and every token of the prompt, i.e. the history's
  items too, a stricter support than ours (variant ``norepeat``).
- ``rollout_func`` (TRL's experimental custom-generation hook) lets the caller run ``generate``
  itself, so a ``LogitsProcessor`` can apply the exact constraint: catalogue items not yet in the
  list — what our sampler allows with the atomic codec (variant ``rollout``). Generation then uses
  TRL's own ``generation_config``; scoring, advantages, reference, loss and optimiser stay TRL's.

In every variant TRL's log-probs (loss, ratio, KL) are softmaxes over the whole vocabulary: TRL has
no way to renormalise over the allowed tokens (docs/method.md (3.9)), which ours does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

VARIANTS = ("rollout", "items", "norepeat")


class DistinctItems:
    """A ``transformers`` logits processor: only item tokens not yet generated in this completion
    (the prompt is left-padded, so generated tokens start at column ``prompt_len``)."""

    def __init__(self, item_mask: torch.Tensor, prompt_len: int):
        self.blocked = ~item_mask  # (V,) True off the catalogue
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.masked_fill(self.blocked.to(scores.device), float("-inf"))  # (R, V)
        listed = input_ids[:, self.prompt_len:]                                      # (R, t) items so far
        if listed.shape[1]:
            scores = scores.scatter(1, listed, float("-inf"))
        return scores


class TitleLists:
    """A ``transformers`` logits processor for multi-token codes (the title codec): at each step the
    trie edges that lead to an item not yet in the completion (:class:`blade.model.constraint.ListMask`,
    the mask our sampler draws under), and after K items EOS only, which ends the completion (the
    codec's padding is EOS for SmolLM2). One instance per ``generate`` call."""

    def __init__(self, tables, k: int, prompt_len: int, eos: int):
        self.tables, self.k, self.prompt_len, self.eos = tables, k, prompt_len, eos
        self.lists = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        from blade.model.constraint import ListMask

        if self.lists is None:
            self.lists = ListMask(self.tables, input_ids.shape[0], self.k)
        else:  # the token drawn under the previous mask
            self.lists.advance(input_ids[:, -1].to(self.tables.item_ids.device))
        neg = self.lists.next().clone()
        done = ~self.lists.active
        neg[done] = -1.0
        neg[done, self.eos] = 0.0
        return scores.masked_fill(neg.to(scores.device) < 0, float("-inf"))


def list_items(tables, k: int, completions: list[list[int]], eos: int) -> torch.Tensor:
    """The items (R, k) of multi-token completions, read by replaying them through the list mask
    (-1 where a completion ends early or leaves the trie)."""
    from blade.model.constraint import ListMask, padded_lists

    tok, _ = padded_lists(completions, eos)
    T = tok.shape[1]
    lists = ListMask(tables, len(completions), k)
    for t in range(T):
        lists.next()
        lists.advance(tok[:, t])
    items = lists.items
    return torch.where(items >= 0, tables.item_ids[items.clamp(min=0)], items)


def _constrained_rollout(item_mask: torch.Tensor | None, processor: Callable | None = None) -> Callable:
    """A ``rollout_func``: TRL's own generation call (its generation config, its model unwrapping)
    plus :class:`DistinctItems`; one completion per prompt it is given (the sampler already repeats
    each prompt G times)."""
    from trl.models import unwrap_model_for_generation

    def rollout(prompts: list[str], trainer) -> dict:
        enc = trainer.processing_class(text=prompts, padding=True, padding_side="left", return_tensors="pt")
        enc = {k: v.to(trainer.accelerator.device) for k, v in enc.items()}
        width = enc["input_ids"].shape[1]
        with (unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                          generation_kwargs=trainer.generation_kwargs) as model,
              torch.no_grad()):
            constraint = DistinctItems(item_mask, width) if processor is None else processor(width)
            out = model.generate(**enc, generation_config=trainer.generation_config, logits_processor=[constraint])
        prompt_ids = [ids[m.bool()].tolist() for ids, m in zip(enc["input_ids"].cpu(), enc["attention_mask"].cpu())]
        return {"prompt_ids": prompt_ids, "completion_ids": out[:, width:].cpu().tolist(), "logprobs": None}

    return rollout


def load_tokenizer(model_dir: Path):
    """The saved tiny tokenizer as saved. ``AutoTokenizer`` would not do: transformers 5 reads the
    model type (qwen2) from config.json and swaps in Qwen2's byte-level pre-tokenizer, which drops
    the ``<i…>`` item tokens from text. TRL needs an EOS token (it builds the generation config's
    ``eos_token_id`` from it; None crashes ``generate``); a list has no end token, so the unused
    ``[EOI]`` stands in — it is off the catalogue, hence never generated in any variant, and every
    completion is K tokens as ours."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    tokenizer.eos_token = "[EOI]"
    return tokenizer


def train_trl_grpo(model_dir: Path, out_dir: Path, prompts: list[str], rows: list[int], reward_fn: Callable,
                   item_token_ids: list[int], *, variant: str, contexts: int, group: int, k: int, lr: float,
                   beta: float, grad_clip: float, device: str, dtype: str, wait_turn: Callable[[], None],
                   report: Callable[[float], None], model=None, tokenizer=None, processor: Callable | None = None,
                   max_completion: int | None = None) -> None:
    """``len(prompts) // contexts`` GRPO steps of TRL on ``model_dir`` (and, β > 0, a reference
    loaded from the same path), ``contexts`` prompts × ``group`` completions of ``k`` tokens each.

    The dataset is the prompts in step order, unshuffled, so step s sees the same contexts as our
    step s. ``wait_turn()`` blocks before each step; ``report(seconds)`` gets each step's wall time,
    from the turn's start to TRL's ``on_step_end`` (data loading, generation, reward, reference
    forward, loss, backward, clipping, optimiser and scheduler; the logging of the step before).

    A pretrained LLM (the title codec): ``model`` is the loaded LoRA model (TRL then takes π_ref as
    the base with the adapter disabled: one model in memory), ``tokenizer`` its tokenizer,
    ``processor(prompt_width)`` the logits processor of the ``rollout`` variant (:class:`TitleLists`)
    and ``max_completion`` the most tokens a list can take.
    """
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import warnings

    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import GRPOConfig, GRPOTrainer

    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5's renames, inside TRL
    hf_logging.disable_progress_bar()

    if variant not in VARIANTS:
        raise ValueError(f"unknown TRL variant {variant!r}; valid: {', '.join(VARIANTS)}")
    tokenizer = tokenizer or load_tokenizer(model_dir)
    vocab = len(tokenizer)
    item_mask = torch.zeros(vocab, dtype=torch.bool)
    item_mask[item_token_ids] = True
    off_catalogue = (~item_mask).nonzero().squeeze(1).tolist()
    generation_kwargs = None
    if variant in ("items", "norepeat"):
        generation_kwargs = {"suppress_tokens": off_catalogue}
        if variant == "norepeat":
            generation_kwargs["no_repeat_ngram_size"] = 1
    steps = len(prompts) // contexts
    args = GRPOConfig(
        output_dir=str(out_dir), per_device_train_batch_size=contexts * group, num_generations=group,
        max_completion_length=max_completion or k, max_steps=steps, learning_rate=lr, lr_scheduler_type="constant", beta=beta,
        max_grad_norm=grad_clip, temperature=1.0, top_p=1.0, generation_kwargs=generation_kwargs,
        # not TRL's defaults (True): a tiny float32 model on CPU needs neither, and our step uses neither
        gradient_checkpointing=False, bf16=dtype == "bfloat16",
        use_cpu=device == "cpu", shuffle_dataset=False, seed=0, report_to="none", save_strategy="no",
        logging_steps=steps + 1, disable_tqdm=True,
    )

    class Lockstep(TrainerCallback):
        start = 0.0

        def on_train_begin(self, *a, **kw):
            wait_turn()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            report(time.perf_counter() - self.start)
            if state.global_step < steps:
                wait_turn()
                self.start = time.perf_counter()

    trainer = GRPOTrainer(
        model=model if model is not None else str(model_dir), reward_funcs=reward_fn, args=args,
        processing_class=tokenizer, train_dataset=Dataset.from_dict({"prompt": prompts, "row": rows}),
        callbacks=[Lockstep()],
        rollout_func=_constrained_rollout(item_mask, processor) if variant == "rollout" else None,
    )
    trainer.remove_callback(PrinterCallback)  # its end-of-training metrics dict, one per worker
    trainer.train()
