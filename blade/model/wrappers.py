"""Seeing through a LoRA (peft) wrapper, for the modules that run a model's parts by hand."""


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def unwrap_peft(model):
    """The base model under a LoRA (peft) wrapper; any other model as it is."""
    return model.get_base_model() if is_peft(model) else model
