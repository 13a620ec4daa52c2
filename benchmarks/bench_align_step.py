"""Benchmark of one alignment step (``blade.align.loop.alignment_step``) on the tiny model or a
pretrained LLM (``--model``), against TRL 1.16's ``GRPOTrainer`` on the same model, contexts, group
size and list length.

Each side runs in its own process ("worker"), all built from one saved model and one prepared
dataset; the workers take turns, one step each, round after round (the order rotating), so machine
noise hits every side alike. Per side: the median step time over ``--steps`` steps (after 2
warm-up steps), lists/s (B·G lists per step) and the worker's peak resident memory (its
``ru_maxrss``: imports and both models included; "+steps" is what stepping added over the ready
worker; "faults", the minor page faults of a step: memory the allocator mapped anew). Every side
runs with glibc's malloc as it runs in use (``--malloc as-run``: ours tuned as every ``blade`` command
tunes it, blade/allocator.py; TRL untuned, as a user runs it), or tuned (``tuned``) or untuned
(``default``) on every side alike: the allocator moves TRL's step far more than ours. Ours also prints each part's median — rollout (constrained sampling of B·G lists), scoring
(the list reward), forward (constrained policy log-probs with grad + reference log-probs: two
forwards, each running every distinct prompt once (blade/model/shared_prompt.py) and replaying the
sampler's mask), objective, backward (the alignment term's, then
the penalty's on the retained graph every ``grad_norm_every`` = 5 steps, so that the alignment
term's own gradient norm is logged; one pass otherwise), optimizer.

Sides: ``--method blade`` (one row per ``--estimator``) and ``grpo`` (``baselines/grpo.py``, β 0.04,
TRL 1.16's loss) through our loop; ``padded``: that GRPO with the padded per-list forward
(``Policy.share_prompts = False``: each list's prompt recomputed, padding computed), the step before
one prompt pass per context; ``dpo`` (offline, M = 16 stored lists per context) as the loop
runs it — scoring only the best and worst list its loss reads (``Objective.lists_read``) — and as
``dpo:every``, scoring all 16 (the loop before that hook; "lists/s" counts B·M for both);
``--trl`` variants of TRL's trainer (β 0.04, so with its reference model loaded from the same
path), with the same list reward (``--reward``) computed by a TRL reward function that decodes item
tokens back to items. TRL cannot constrain generation through
``generation_kwargs`` (see benchmarks/_trl_grpo.py): ``rollout`` constrains it exactly through
TRL's experimental ``rollout_func``; ``items`` keeps it to item tokens (``suppress_tokens``, repeats
possible); ``norepeat`` adds ``no_repeat_ngram_size=1`` (no repeats, but no history item either).
The last lines give each of our steps' lists/s over each TRL variant's (``grpo / trl:…`` is the
like-for-like one). TRL runs with its defaults except: no gradient checkpointing and float32 (TRL
defaults to both; ours uses neither), a constant learning rate, ``shuffle_dataset=False`` (so it
steps through our contexts; its reward function checks), and ``[EOI]`` as the EOS token it
requires. Ours runs as ``blade align`` does — deterministic kernels — and TRL without them (its
default); every side computes with ``--threads`` torch threads.

The model is built from config (no SFT needed for timing: it starts untrained), BLADE's prior comes
from random reference rewards, and the dataset is the embedded synthetic one. On a machine with
fewer free cores than threads, OpenMP's barriers stall and steps get several times slower on both
sides (2 threads on a loaded 2-core box: 3-9x): read the ratio, and compare runs at ``--threads 1``.

    python benchmarks/bench_align_step.py                        # default: blade (dp) + grpo vs TRL, CPU
    OMP_NUM_THREADS=2 python benchmarks/bench_align_step.py --contexts 32 --group 8 --k 10 --n-items 1000
    python benchmarks/bench_align_step.py --estimator dp,nig,static --trl none   # estimators only
    python benchmarks/bench_align_step.py --device cuda --dtype bfloat16 --hidden 1024 --layers 8 --heads 16 \
        --kv-heads 4

A pretrained LLM (``--model``, converted by ``blade base-model``; ``--data``, a prepared dataset):
SmolLM2-135M-Instruct with the title codec and LoRA r 8 on q/v, as config/llm.yaml trains it. TRL
trains the same loaded LoRA model (its π_ref: the adapter disabled; ours: the saved adapter loaded
a second time into the same model, blade/model/reference.py: one model in memory on both sides),
its generation constrained by :class:`benchmarks._trl_grpo.TitleLists`,
the trie mask our sampler draws under (variant ``rollout`` only):

    python benchmarks/bench_align_step.py --threads 1 --model smollm2-135m-instruct \
        --data results/data/video_games_llm --dtype bfloat16 --contexts 8 --group 4 --k 10 --steps 3 \
        --method grpo,blade,padded --trl rollout
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PARTS = ("rollout", "score", "forward", "objective", "backward", "optimizer")
WARMUP = 2
LR = 1e-4
GRPO_BETA = 0.04
OFFLINE_M = 16  # stored reference lists per context of the offline sides (rollout.m's default)  # baselines/grpo.py's default (docs/method.md §5); TRL's own default is 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="blade,grpo",
                    help="comma-separated, ours: blade, grpo, padded (GRPO with the padded per-list forward), dpo")
    ap.add_argument("--estimator", default="dp", help="BLADE's estimators, comma-separated: dp,nig,static")
    ap.add_argument("--trl", default="rollout,items",
                    help="TRL GRPOTrainer variants, comma-separated: rollout (exact constraint through rollout_func), "
                         "items (item tokens only), norepeat (no repeated token); 'none' = no TRL")
    ap.add_argument("--steps", type=int, default=8, help=f"timed steps per side (after {WARMUP} warm-up steps)")
    ap.add_argument("--contexts", type=int, default=32, help="B")
    ap.add_argument("--group", type=int, default=8, help="G")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--n-users", type=int, default=1500)
    ap.add_argument("--n-items", type=int, default=300)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads of every side (default: torch's default here, i.e. OMP_NUM_THREADS)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--reward", default="ndcg", help="comma-separated reward names, weight 1 each")
    ap.add_argument("--beta-kl", type=float, default=None, help="BLADE's β_kl (default: its config default)")
    ap.add_argument("--malloc", default="as-run", choices=["as-run", "tuned", "default"],
                    help="glibc's malloc: as each side runs (ours tuned as `blade` commands tune it, "
                         "blade/allocator.py: freed blocks reused, not faulted in again each step; TRL as a user "
                         "runs it, glibc's default), tuned on every side, or the default on every side")
    ap.add_argument("--model", default=None,
                    help="a pretrained base model of blade/model/base_models.py (e.g. smollm2-135m-instruct, converted "
                         "by `blade base-model`) as the policy, with the title codec and LoRA r 8 on q/v, instead of "
                         "the tiny model; needs --data")
    ap.add_argument("--data", default=None, help="with --model: a prepared dataset (results/data/NAME)")
    args = ap.parse_args()
    if args.threads is None:
        import torch

        args.threads = torch.get_num_threads()  # before seed_everything pins blade's own count

    sides = [{"name": f"blade:{e}", "kind": "ours", "method": "blade",
              "options": {"estimator": e} | ({} if args.beta_kl is None else {"beta_kl": args.beta_kl})}
             for e in _names(args.estimator) if "blade" in _names(args.method)]
    if "grpo" in _names(args.method):
        sides.append({"name": "grpo", "kind": "ours", "method": "grpo", "options": {"beta": GRPO_BETA}})
    if "padded" in _names(args.method):  # GRPO scored as before one prompt pass per context: every (prompt, list) row
        sides.append({"name": "grpo:padded", "kind": "ours", "method": "grpo", "options": {"beta": GRPO_BETA},
                      "padded": True})
    if "dpo" in _names(args.method):  # offline: the loss reads 2 of M = 16 stored lists per context
        sides += [{"name": "dpo", "kind": "ours", "method": "dpo", "options": {}, "offline": True},
                  {"name": "dpo:every", "kind": "ours", "method": "dpo", "options": {}, "offline": True,
                   "every": True}]
    unknown = set(_names(args.method)) - {"blade", "grpo", "padded", "dpo"}
    if unknown:
        ap.error(f"--method: unknown {sorted(unknown)}; valid: blade, grpo, padded, dpo")
    if args.trl != "none":
        from benchmarks._trl_grpo import VARIANTS

        for v in _names(args.trl):
            if v not in VARIANTS:
                ap.error(f"--trl: unknown variant {v!r}; valid: {', '.join(VARIANTS)} or none")
            sides.append({"name": f"trl:{v}", "kind": "trl", "variant": v})
    if not sides:
        ap.error("nothing to time: give --method and/or --trl")

    with tempfile.TemporaryDirectory() as tmp:
        setup = _prepare(args, Path(tmp))
        results = _lockstep(sides, vars(args) | setup)
    _print(args, sides, results, setup)


def _names(csv: str) -> list[str]:
    return [s.strip() for s in csv.split(",") if s.strip()]


# ---- one dataset, one model, one schedule of contexts for every side ------------------------------
def _prepare(args: argparse.Namespace, tmp: Path) -> dict:
    from blade.data import prepare
    from blade.data import load_prepared
    from blade.model.policy import Policy, PolicyConfig
    from blade.seeding import seed_everything

    _quiet()
    seed_everything(0)
    if args.model:  # a pretrained LLM: titles, LoRA, a real dataset
        from blade.model.policy import LoraOptions

        if not args.data:
            raise SystemExit("--model needs --data: a prepared dataset, e.g. results/data/video_games_llm")
        data = Path(args.data)
        items, splits, _ = load_prepared(data)
        policy_cfg = PolicyConfig(kind="pretrained", model=args.model, codec="title", dtype=args.dtype,
                                  device=args.device, lora=LoraOptions(rank=8, alpha=16, dropout=0.05,
                                                                       targets=["q_proj", "v_proj"]))
    else:
        data = tmp / "data"
        prepare({"source": "synthetic", "params": {"n_users": args.n_users, "n_items": args.n_items, "seed": 0}}, data)
        items, splits, _ = load_prepared(data)
        policy_cfg = PolicyConfig(hidden=args.hidden, layers=args.layers, heads=args.heads, kv_heads=args.kv_heads,
                                  intermediate=4 * args.hidden, dtype=args.dtype, device=args.device)
    policy = Policy.build(policy_cfg, items)
    policy.save(tmp / "model")
    n_ctx = min(len(splits["train"]), 4096)
    rng = np.random.default_rng(0)
    schedule = [rng.choice(n_ctx, size=args.contexts, replace=False).tolist() for _ in range(WARMUP + args.steps)]
    return {"data_dir": str(data), "model_dir": str(tmp / "model"), "out_dir": str(tmp), "n_ctx": n_ctx,
            "schedule": schedule, "n_items": len(items),
            "n_params": sum(p.numel() for p in policy.model.parameters())}


# ---- the workers and their turns ------------------------------------------------------------------
def _lockstep(sides: list[dict], common: dict) -> list[dict]:
    """Start one worker per side (set-up may overlap), then give each one step per round, rotating
    the order every round; collect the step rows and each worker's memory."""
    ctx = mp.get_context("spawn")  # a fresh interpreter each: no torch state or allocator shared with us
    conns, procs = [], []
    for side in sides:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, json.dumps(side), json.dumps(common)), daemon=True)
        proc.start()
        child.close()  # the worker's end lives in the worker only: its death (an OOM kill) reads as EOF here
        conns.append(parent)
        procs.append(proc)
    ready = [_recv(conn, side["name"]) for side, conn in zip(sides, conns)]  # each one's RSS when ready
    rows: list[list[dict]] = [[] for _ in sides]
    n = len(common["schedule"])
    for step in range(n):
        order = [(step + i) % len(sides) for i in range(len(sides))]
        for i in order:
            conns[i].send_bytes(b"go")
            rows[i].append(_recv(conns[i], sides[i]["name"]))
    results = []
    for i, side in enumerate(sides):
        conns[i].send_bytes(b"report")
        memory = _recv(conns[i], side["name"])
        procs[i].join(timeout=60)
        results.append({"rows": rows[i][WARMUP:], **ready[i], **memory})
    return results


def _recv(conn, name: str) -> dict:
    try:
        msg = json.loads(conn.recv_bytes())
    except EOFError:
        raise SystemExit(f"worker {name!r} died (its traceback is above; none if the kernel killed it for memory)") from None
    return msg


def _worker(conn, side_json: str, common_json: str) -> None:
    side, common = json.loads(side_json), json.loads(common_json)
    _quiet()
    if common["malloc"] == "tuned" or (common["malloc"] == "as-run" and side["kind"] == "ours"):
        from blade.allocator import keep_freed_memory

        keep_freed_memory()
    faults = {"last": _minor_faults()}

    def wait_turn() -> None:
        try:
            msg = conn.recv_bytes()
        except EOFError:  # the parent stopped (another worker failed, or Ctrl-C): leave quietly
            raise SystemExit(1) from None
        if msg != b"go":
            raise RuntimeError(f"worker {side['name']}: expected 'go', got {msg!r}")

    def report(row: dict) -> None:
        if "total" in row:  # a step: the page faults since the last report (a worker faults nothing while waiting)
            now = _minor_faults()
            row["faults"], faults["last"] = now - faults["last"], now
        conn.send_bytes(json.dumps(row).encode())

    step_fn = _our_side if side["kind"] == "ours" else _trl_side
    step_fn(side, common, wait_turn, report, lambda: report({"ready": True, "ready_rss_mib": _rss_mib()}))
    if conn.recv_bytes() != b"report":
        raise RuntimeError(f"worker {side['name']}: expected 'report'")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = None
    if common["device"].startswith("cuda"):
        import torch

        gpu = torch.cuda.max_memory_allocated() / 2**20
    report({"peak_rss_mib": peak, "peak_gpu_mib": gpu})


def _our_side(side, common, wait_turn, report, ready) -> None:
    import torch

    from blade.align.estimators import RefPrior
    from blade.align.loop import AlignConfig, alignment_step
    from blade.align.registry import build_objective
    from blade.data import load_prepared
    from blade.model.policy import Policy
    from blade.model.reference import reference_policy
    from blade.rewards import ListReward, RewardConfig
    from blade.seeding import seed_everything

    seed_everything(0)  # as `blade align` runs: seeded, deterministic kernels
    torch.set_num_threads(common["threads"])  # instead of blade's pinned count: the same on every side
    items, splits, stats = load_prepared(common["data_dir"])
    train = splits["train"]
    Policy.share_prompts = not side.get("padded")
    policy = Policy.load(common["model_dir"], common["device"])
    ref = reference_policy(policy, common["model_dir"], common["device"])  # as the loop loads π_ref
    reward = ListReward(RewardConfig(weights={n: 1.0 for n in _names(common["reward"])}), items, train, stats)
    m, n_ctx, rng = OFFLINE_M, common["n_ctx"], np.random.default_rng(0)
    ref_rewards = pd.DataFrame({"row": np.repeat(np.arange(n_ctx), m), "sample": np.tile(np.arange(m), n_ctx),
                                "reward": rng.random(n_ctx * m)})
    prior = RefPrior.from_frame(ref_rewards, len(train))
    B, G = common["contexts"], common["group"]
    cfg = AlignConfig(contexts_per_step=B, group_size=G, k=common["k"], batch_size=B * G)
    objective = build_objective(side["method"], side["options"], prior)
    stored = None
    if side.get("offline"):  # M = 16 stored lists per context: K distinct random items, random rewards
        from blade.align.loop import ReferenceGroups

        ids = items["item_id"].to_numpy()
        lists = [rng.permutation(ids)[: common["k"]] for _ in range(n_ctx * m)]
        stored = ReferenceGroups(ref_rewards.assign(items=lists))
        if side.get("every"):  # score all M lists, as before offline objectives declared lists_read
            objective.lists_read = lambda rewards, rows, step: None
    params = [p for p in policy.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR)
    histories, targets = train["history"].tolist(), train["target"].to_numpy()
    ready()
    for step, rows in enumerate(common["schedule"]):
        gen = torch.Generator(device=policy.device).manual_seed(step)
        wait_turn()
        t = time.perf_counter()
        row = alignment_step(policy, ref, objective, reward, opt, params, cfg, np.asarray(rows), histories, targets,
                             step, gen, stored)
        total = time.perf_counter() - t
        report({"total": total, **{p: row[f"seconds/{p}"] for p in PARTS}})


def _trl_side(side, common, wait_turn, report, ready) -> None:
    import torch

    from benchmarks._trl_grpo import load_tokenizer, train_trl_grpo
    from blade.data import load_prepared
    from blade.model.codec import ItemCodec
    from blade.rewards import ListReward, RewardConfig

    # TRL as a user runs it: its Trainer seeds itself (seed 0), without blade.seeding's deterministic
    # kernels (whose NaN fill of every torch.empty, blade.seeding now turns off, once cost TRL 2.2-3.0 s a step)
    torch.set_num_threads(common["threads"])
    items, splits, stats = load_prepared(common["data_dir"])
    train = splits["train"]
    codec = ItemCodec.load(common["model_dir"])
    reward = ListReward(RewardConfig(weights={n: 1.0 for n in _names(common["reward"])}), items, train, stats)
    histories, targets = train["history"].tolist(), train["target"].to_numpy()
    llm = {}
    if codec.kind == "atomic":
        tok = load_tokenizer(common["model_dir"])
        item_tokens = [c[0] for c in codec.codes]
        token_item = np.full(len(tok), -1, dtype=np.int64)  # token id → item id, -1 off the catalogue
        token_item[item_tokens] = codec.item_ids
    else:  # titles: TRL trains the same LoRA model, generation constrained by the same trie mask as ours
        from benchmarks._trl_grpo import TitleLists, list_items
        from blade.model.constraint import TrieTables
        from blade.model.policy import Policy

        if side["variant"] != "rollout":
            raise SystemExit(f"TRL variant {side['variant']!r}: with the title codec only 'rollout' constrains lists")
        policy = Policy.load(common["model_dir"], common["device"])
        tok, item_tokens = codec.tokenizer, []
        tables = TrieTables(codec, policy.vocab_size, torch.device("cpu"))
        eos = tok.eos_token_id
        if codec.pad_id != eos:
            raise SystemExit("the title codec's TRL side needs the codec's padding to be EOS (SmolLM2's is)")
        llm = {"model": policy.model, "tokenizer": tok, "max_completion": common["k"] * codec.trie.depth,
               "processor": lambda width: TitleLists(tables, common["k"], width, eos)}

    K, G, schedule = common["k"], common["group"], common["schedule"]
    seen = {"steps": 0, "not_list": float("nan")}

    def list_reward(prompts, completions, completion_ids, row, **_) -> list[float]:
        """The same list reward as ours: completions (B·G, ≤ K) token ids → item ids (-1 for a
        non-item token, padded to K), scored against each row's history and target. Checks that
        TRL drew this step's contexts of our schedule, G times each, in our order."""
        expected = np.repeat(schedule[seen["steps"]], G)
        if not np.array_equal(np.asarray(row), expected):
            raise RuntimeError(f"TRL step {seen['steps']}: its contexts differ from the schedule ours steps through")
        seen["steps"] += 1
        if llm:
            lists = list_items(tables, K, completion_ids, eos).numpy()
        else:
            lists = np.full((len(completion_ids), K), -1, dtype=np.int64)
            for r, ids in enumerate(completion_ids):
                lists[r, : min(len(ids), K)] = token_item[np.asarray(ids[:K], dtype=np.int64)]
        # share of completions that are not lists of K distinct catalogue items (ours: 0 by construction)
        distinct = np.array([len(set(lst)) for lst in lists.tolist()])
        seen["not_list"] = float(np.mean((lists < 0).any(1) | (distinct < K)))
        if side["variant"] == "rollout" and seen["not_list"] > 0:
            raise RuntimeError("TRL rollout variant: a completion is not a list of distinct items (constraint broken)")
        return reward([histories[i] for i in row], targets[np.asarray(row)], lists)["reward"].tolist()

    rows = [r for step_rows in schedule for r in step_rows]
    # the prompt as text, which TRL's tokenizer call must turn back into exactly codec.prompt's ids
    ids = [codec.prompt(histories[r], K) for r in rows]
    prompts = [tok.decode(p) if llm else " ".join(tok.convert_ids_to_tokens(p)) for p in ids]
    if tok(prompts, add_special_tokens=True)["input_ids"] != ids:
        raise SystemExit("TRL side: the prompt texts do not tokenise back to the codec's prompt ids")
    first = {"done": False}

    def wait_then_mark() -> None:
        if not first["done"]:  # the first turn is TRL's on_train_begin: tell the parent we are ready
            first["done"] = True
            ready()
        wait_turn()

    train_trl_grpo(Path(common["model_dir"]), Path(common["out_dir"]) / f"trl_{side['variant']}", prompts, rows,
                   list_reward, item_tokens, variant=side["variant"], contexts=common["contexts"], group=G, k=K,
                   lr=LR, beta=GRPO_BETA, grad_clip=1.0, device=common["device"], dtype=common["dtype"],
                   wait_turn=wait_then_mark, report=lambda s: report({"total": s, "not_list": seen["not_list"]}), **llm)


def _quiet() -> None:
    """No weight-loading/saving progress bars from every worker."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# ---- the table --------------------------------------------------------------------------------------
def _print(args, sides, results, setup) -> None:
    B, G = args.contexts, args.group
    cuda = args.device.startswith("cuda")
    print(f"device {args.device} {args.dtype}; model {setup['n_params'] / 1e6:.2f}M parameters; catalogue "
          f"{setup['n_items']} items; B={B} G={G} K={args.k}; torch threads {args.threads} per side; "
          f"median of {args.steps} steps per side, sides alternating step by step; malloc {args.malloc} "
          "(faults: minor page faults per step)")
    print(f"{'side':<14}" + "".join(f"{p:>11}" for p in PARTS) + f"{'total':>11}{'steps/s':>9}{'lists/s':>9}"
          f"{'q1-q3 ms':>12}{'peak RSS':>10}{'+steps':>8}{'faults':>8}" + (f"{'peak GPU':>10}" if cuda else ""))
    lists_per_s = {}
    for side, res in zip(sides, results):
        times = [1000 * r["total"] for r in res["rows"]]  # ms
        total = statistics.median(times)
        q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (total, total, total)
        lists_per_s[side["name"]] = 1000 * B * (OFFLINE_M if side.get("offline") else G) / total
        med = {p: statistics.median(r[p] for r in res["rows"]) for p in PARTS} if side["kind"] == "ours" else {}
        parts = "".join(f"{1000 * med[p]:>9.1f}ms" if med else f"{'':>11}" for p in PARTS)
        memory = (f"{res['peak_rss_mib']:>7.0f}MiB{res['peak_rss_mib'] - res['ready_rss_mib']:>5.0f}MiB"
                  f"{statistics.median(r['faults'] for r in res['rows']):>8.0f}")
        if cuda:
            memory += f"{res['peak_gpu_mib']:>7.0f}MiB"
        print(f"{side['name']:<14}{parts}{total:>9.1f}ms{1000 / total:>9.2f}{lists_per_s[side['name']]:>9.0f}"
              f"{f'{q1:.0f}-{q3:.0f}':>12}{memory}")
        if med:
            shares = ", ".join(f"{p} {100 * med[p] / sum(med.values()):.0f}%" for p in PARTS)
            print(f"{'':<14}split: {shares}")
        else:
            bad = statistics.mean(r["not_list"] for r in res["rows"])
            print(f"{'':<14}completions that are not K distinct catalogue items: {100 * bad:.1f}%")
    trl = [s["name"] for s in sides if s["kind"] == "trl"]
    for ours in [s["name"] for s in sides if s["kind"] == "ours"]:
        for other in trl:
            print(f"{ours} / {other}: {lists_per_s[ours] / lists_per_s[other]:.2f}x lists/s")
    if {"dpo", "dpo:every"} <= set(lists_per_s):  # scoring only the lists the loss reads, against all M
        print(f"dpo / dpo:every: {lists_per_s['dpo'] / lists_per_s['dpo:every']:.2f}x steps/s")


if __name__ == "__main__":
    main()
