"""Resumable checkpoints without pickles: weights and optimizer tensors in safetensors, the rest
in JSON. A checkpoint directory is written beside its final place and renamed in, so a job killed
mid-write leaves the previous checkpoint intact.

A checkpoint resumes only the run that wrote it. Its trainer state records a fingerprint of the
run's config and of its input files' content (:func:`run_fingerprint`); a job that finds a
checkpoint with another fingerprint (Snakemake reruns a job after its options or its inputs
changed) removes it and starts afresh, instead of finishing the old run under the new name."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from blade.io import write_json


def run_fingerprint(config: Mapping[str, Any], inputs: Iterable[str | Path]) -> str:
    """sha256 of ``config`` (canonical JSON) and of the content of every input: a file, or every
    file under a directory (by relative path)."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for root in map(Path, inputs):
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            digest.update(str(path.relative_to(root) if root.is_dir() else path.name).encode())
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def resumable(directory: Path, config: Mapping[str, Any], inputs: Iterable[str | Path], procs) -> tuple[bool, str]:
    """(whether ``directory`` holds a checkpoint of this run, the run's fingerprint). A checkpoint
    of another run (other options or inputs, or one that recorded none) is removed by the main
    process of ``procs`` (:func:`blade.distributed.group`), with a message, so that the job starts
    afresh; every process waits until it is gone."""
    fingerprint = run_fingerprint(config, inputs)
    state = Path(directory) / "trainer_state.json"
    resume = state.is_file() and json.loads(state.read_text()).get("fingerprint") == fingerprint
    if state.is_file() and not resume:
        print(f"{directory}: written by a run with other options or inputs; removing it and starting afresh")
        if procs.main:
            shutil.rmtree(directory, ignore_errors=True)
    procs.barrier()
    return resume, fingerprint


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for idx, slots in state["state"].items():
        for name, value in slots.items():
            key = f"{idx}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().contiguous().cpu()
            else:
                scalars[key] = value
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(directory: Path, policy, optimizer: torch.optim.Optimizer, trainer_state: dict,
                    extras: dict | None = None) -> None:
    """Policy, optimizer, RNG and trainer state — and any ``extras`` policies (e.g. an EMA anchor, in
    ``directory/<name>``) — replace the checkpoint in one rename."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save(tmp)
    for name, extra in (extras or {}).items():
        extra.save(tmp / name)
    tensors, meta = _flatten_optimizer(optimizer.state_dict())
    save_file(tensors or {"_empty": torch.zeros(0)}, str(tmp / "optimizer.safetensors"))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / "rng.safetensors"))
    write_json(tmp / "optimizer.json", meta)
    write_json(tmp / "trainer_state.json", trainer_state)
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(directory: Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore optimizer and RNG state; return the trainer state (the caller loads the policy)."""
    directory = Path(directory)
    tensors = load_file(str(directory / "optimizer.safetensors"))
    tensors.pop("_empty", None)
    meta = json.loads((directory / "optimizer.json").read_text())
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta))
    rng = load_file(str(directory / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return json.loads((directory / "trainer_state.json").read_text())
