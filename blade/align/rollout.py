"""Reference rollouts (`blade rollout`): M lists per training context sampled from π_ref.

They are BLADE's historical prior (the reference reward distribution of every context, docs/method.md
§3.1), the static estimators' ``F̂_ref`` and the offline data of the preference baselines (DPO,
S-DPO, BoNBoN draw their pairs from them). One Parquet row per list:
``row`` (train-split row), ``sample`` (0..M-1), ``items`` (list of item ids), ``reward`` (the
configured weighted reward) and one column per reward component.

Sampling is seeded per chunk of contexts (``[seed, chunk]``), so a killed job restarts from the
chunks it already wrote (``<out>.parts/``, if written with the same options and inputs) and
produces the same file, then merges them atomically. (The draws depend on ``batch_size``, which
splits each chunk into sampler batches.)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from blade.align.config import RolloutConfig
from blade.data.prepared import PreparedData
from blade.errors import ConfigError
from blade.io import write_parquet
from blade.model.policy import Policy
from blade.rewards import ListReward, RewardConfig
from blade.sampling import ListSampler
from blade.seeding import seed_everything, torch_generator
from blade.train.checkpoint import run_fingerprint


REWARD_ATTR = "blade_reward_config"


def reward_fingerprint(reward_cfg: RewardConfig) -> str:
    """The reward configuration as canonical JSON: what a rollouts file was scored with."""
    return json.dumps(dataclasses.asdict(reward_cfg), sort_keys=True)


def check_rollout_reward(frame: pd.DataFrame, reward_cfg: RewardConfig, path: str | Path) -> None:
    """Refuse reference rollouts scored under another reward configuration than the run's."""
    stored, wanted = frame.attrs.get(REWARD_ATTR), reward_fingerprint(reward_cfg)
    if stored != wanted:
        raise ConfigError(f"{path}: the reference rollouts were scored with reward {stored or '(unrecorded)'} but this "
                          f"run's reward setting is {wanted}; re-run `blade rollout` with the run's reward setting "
                          "(the DAG keys rollouts by reward setting: results/rollouts/DATASET/SETTING/…)")


def context_rows(n_train: int, max_contexts: int) -> np.ndarray:
    """The train rows that get rollouts: all, or a fixed subset independent of the run's seed."""
    if not max_contexts or max_contexts >= n_train:
        return np.arange(n_train)
    return np.sort(np.random.default_rng(0).choice(n_train, size=max_contexts, replace=False))


def sample_groups(policy: Policy, histories: list[list[int]], k: int, group: int, temperature: float,
                  top_p: float, batch_size: int, generator: torch.Generator):
    """``group`` sampled lists per history, rows ordered context-major: (len(histories)·group, …)."""
    prompt_of = [policy.codec.prompt(h, k) for h in histories]
    prompts = [p for p in prompt_of for _ in range(group)]
    sampler = ListSampler(policy, k, temperature=temperature, top_p=top_p, batch_size=batch_size)
    return sampler.generate(prompts, greedy=False, generator=generator), prompts


def reference_rollouts(data: PreparedData, model_dir: str | Path, out_path: str | Path, cfg: RolloutConfig,
                       reward_cfg: RewardConfig, seed: int, device: str | None = None) -> dict:
    """M lists per context from π_ref, scored under one reward setting, into ``out_path``."""
    return reference_rollouts_scored(data, model_dir, {"reward": (out_path, reward_cfg)}, cfg, seed,
                                     device)["reward"]


def reference_rollouts_scored(data: PreparedData, model_dir: str | Path,
                              outs: dict[str, tuple[str | Path, RewardConfig]], cfg: RolloutConfig, seed: int,
                              device: str | None = None) -> dict[str, dict]:
    """One draw of M lists per context from π_ref, scored under every reward setting of ``outs``
    (``{name: (Parquet path, reward config)}``): the lists do not depend on the reward, so the
    settings share them and each file holds the same lists. Returns each file's summary."""
    outs = {name: (Path(path), reward_cfg) for name, (path, reward_cfg) in outs.items()}
    parts = {name: path.with_name(path.name + ".parts") for name, (path, _) in outs.items()}
    seed_everything(seed)
    train = data.train
    rewards = {name: ListReward(reward_cfg, data.items, train, data.stats) for name, (_, reward_cfg) in outs.items()}
    policy = Policy.load(model_dir, device)
    policy.model.eval()
    rows = context_rows(len(train), cfg.max_contexts)
    # chunks left by a killed job are reused only if that job had these options and inputs
    fingerprint = run_fingerprint({"rollout": dataclasses.asdict(cfg), "seed": seed}, [*data.training_files, model_dir])
    for name, (_, reward_cfg) in outs.items():
        _claim_parts(parts[name], f"{fingerprint}:{reward_fingerprint(reward_cfg)}")
    histories = train["history"].tolist()
    targets = train["target"].to_numpy()
    n_chunks = -(-len(rows) // cfg.chunk)
    invalid = []
    for c in tqdm(range(n_chunks), desc="reference rollouts", mininterval=5):
        todo = [name for name in outs if not (parts[name] / f"chunk{c:06d}.parquet").is_file()]
        if not todo:  # written by an earlier, interrupted run
            continue
        chunk_rows = rows[c * cfg.chunk:(c + 1) * cfg.chunk]
        gen = torch_generator(policy.device, seed, c)
        lists, _ = sample_groups(policy, [histories[r] for r in chunk_rows], cfg.k, cfg.m, cfg.temperature,
                                 cfg.top_p, cfg.batch_size, gen)
        invalid.append(lists.invalid_rate)
        ctx = np.repeat(chunk_rows, cfg.m)
        for name in todo:
            scores = rewards[name]([histories[r] for r in ctx], targets[ctx], lists.items.numpy(), rows=ctx)
            frame = pd.DataFrame({"row": ctx, "sample": np.tile(np.arange(cfg.m), len(chunk_rows)),
                                  "items": list(lists.items.numpy())})
            for component, values in scores.items():
                frame[component] = values.astype(np.float64)
            write_parquet(parts[name] / f"chunk{c:06d}.parquet", frame)
    return {name: _merge_parts(path, parts[name], reward_cfg, len(rows), invalid)
            for name, (path, reward_cfg) in outs.items()}


def _claim_parts(parts: Path, fingerprint: str) -> None:
    """Keep ``parts`` (chunks of a killed job) only if that job's fingerprint is ``fingerprint``;
    otherwise empty it, with a message. Then record the fingerprint in it."""
    marker = parts / "fingerprint"
    if parts.is_dir() and (not marker.is_file() or marker.read_text() != fingerprint):
        print(f"{parts}: chunks of a run with other options or inputs; removing them")
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint)


def _merge_parts(out_path: Path, parts: Path, reward_cfg: RewardConfig, contexts: int, invalid: list[float]) -> dict:
    frame = pd.concat([pd.read_parquet(p) for p in sorted(parts.glob("chunk*.parquet"))], ignore_index=True)
    # the reward setting travels with the file (Parquet metadata), so alignment can refuse a mismatch
    frame.attrs = {REWARD_ATTR: reward_fingerprint(reward_cfg)}
    write_parquet(out_path, frame)
    shutil.rmtree(parts, ignore_errors=True)
    per_ctx = frame.groupby("row")["reward"]
    return {"contexts": int(contexts), "lists": int(len(frame)), "reward_mean": float(frame["reward"].mean()),
            "reward_max": float(frame["reward"].max()),
            "contexts_all_equal": float((per_ctx.nunique() == 1).mean()),  # no within-context spread at all
            "invalid_rate": float(np.mean(invalid)) if invalid else 0.0}
