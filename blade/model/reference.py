"""π_ref for alignment: the SFT policy, frozen (docs/method.md §3: every KL, ratio and prior is
taken against it).

A fully fine-tuned policy gets its own frozen copy. A LoRA policy does not: π_ref is the SFT adapter
loaded a second time into the policy's own peft model, under the name ``reference``, frozen, and its
scoring passes make that adapter the active one (and the model eval mode: no dropout) for their
duration. One base model in memory — as TRL's ``GRPOTrainer`` holds one, its π_ref being the base
with the adapter disabled — instead of two (SmolLM2-135M: 270 MB of bfloat16 weights saved). The
values are those of the separately loaded model: the same base weights, the SFT adapter's weights,
eval mode (tests/test_policy_pretrained.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from blade.model.policy import Policy
from blade.model.wrappers import is_peft

REFERENCE = "reference"  # the adapter name of π_ref inside a LoRA policy's peft model


def frozen(policy: Policy) -> Policy:
    """``policy`` in eval mode with no parameter requiring grad (π_ref, an anchor)."""
    policy.model.eval()
    policy.model.requires_grad_(False)
    return policy


def reference_policy(policy: Policy, directory: str | Path, device: str | None = None) -> Policy:
    """π_ref from the SFT policy saved in ``directory``, for training ``policy``: for a LoRA policy, its
    adapter loaded beside the trained one (:class:`AdapterReference`); otherwise a frozen copy."""
    if is_peft(policy.model):
        return AdapterReference(policy, directory)
    return frozen(Policy.load(directory, device))


class AdapterReference(Policy):
    """A LoRA policy's π_ref sharing its base model: :meth:`token_logprobs` runs with the ``reference``
    adapter active. Only scoring is switched — sample from, or save, the policy itself."""

    def __init__(self, policy: Policy, directory: str | Path):
        model = policy.model
        if REFERENCE in model.peft_config:
            raise ValueError(f"this policy already holds a {REFERENCE!r} adapter: one π_ref per policy")
        self.trained = model.active_adapter
        model.load_adapter(str(directory), adapter_name=REFERENCE, is_trainable=False)
        super().__init__(model, policy.codec, policy.config)

    @contextmanager
    def active(self):
        """The ``reference`` adapter active and the model in eval mode; on exit the trained adapter,
        the mode and every parameter's ``requires_grad`` as they were (peft's ``set_adapter`` toggles
        ``requires_grad``: the trained adapter's must be back before the policy's backward)."""
        model = self.model
        training = model.training
        grads = [p.requires_grad for p in model.parameters()]
        model.set_adapter(REFERENCE, inference_mode=True)
        model.eval()
        try:
            yield
        finally:
            model.set_adapter(self.trained)
            for p, g in zip(model.parameters(), grads):
                p.requires_grad_(g)
            model.train(training)

    def token_logprobs(self, *args, **kwargs):
        with self.active():
            return super().token_logprobs(*args, **kwargs)

    def save(self, directory: str | Path) -> None:
        raise TypeError("π_ref shares the policy's model: save the policy (its trained adapter) instead")
