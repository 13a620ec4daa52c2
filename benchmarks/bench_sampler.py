"""Benchmark of the list sampler (``blade.sampling.ListSampler``), the suite's hot path.

(a) lists/second and peak memory of our batched, tensor-masked sampler (greedy) against
    ``transformers`` ``model.generate(do_sample=False, prefix_allowed_tokens_fn=...)`` with a Python
    callback that allows only trie-valid tokens of items not yet listed (the way BIGRec/D3 decode):
    same model, same prompts, same batch, same K, same validity — the outputs are asserted equal
    before anything is timed. Both the atomic and the title codec.
    The callback's prefix tables are built once per catalogue, outside the timed calls (as BIGRec
    builds its prefix dictionary once, and as our trie is built when the sampler is made); per call
    it parses each row's generated tokens and excludes the items already listed.
(b) how our throughput changes with the catalogue size (atomic codec), and which part of a decoding
    step dominates at each size: transformer body and LM head (timed with hooks on the input embedding
    and the LM head, which every decoding path calls: body = embedding up to the head), and the
    sampler's own mask construction, choice (log-sum-exp, masking, argmax or sampling, log-probs) and
    trie/bookkeeping (timed per source line of ``ListSampler._generate`` with a line tracer, sections
    split at its ``# ----`` comments; the choice also line by line, in runs of its own).

Fairness: the same model object, prompts, batch, K and validity for both; generate() pays its
per-row Python callback and per-row mask scatter — the point of the comparison — and nothing else of
ours: no setup (prefix tables / trie) is timed on either side. The model is the default tiny policy
of config/config.yaml (Qwen2, 2 layers, hidden 64); the batch (256) is what the suite decodes with;
the sampled mode uses the rollouts' defaults (temperature 1, top-p 1). ``--threads`` pins torch's
intra-op threads for both (on a busy 2-core machine 1 thread is the less noisy choice).

Timings: warm-up first, then the median of ``--repeats`` runs. Peak memory: on CPU the resident-set
high-water mark (``ru_maxrss`` / ``VmHWM``) is reset through ``/proc/self/clear_refs`` before a run and
the peak above the resident size at its start is reported (where the reset is not possible, the
``ru_maxrss`` delta, a lower bound); on CUDA ``torch.cuda.max_memory_allocated`` above the start.

    python benchmarks/bench_sampler.py                      # default run (several minutes on 2 cores)
    python benchmarks/bench_sampler.py --threads 1 --batch 64   # one thread, the smaller batch
    python benchmarks/bench_sampler.py --quick              # smoke run, seconds
    python benchmarks/bench_sampler.py --device cuda --dtype bfloat16 --out results/bench_sampler.json
    # a real LLM: SmolLM2-135M-Instruct, title codec over Video_Games' 3,858 titles and its valid histories
    python benchmarks/bench_sampler.py --model smollm2-135m-instruct --data results/data/video_games --batch 16
"""

from __future__ import annotations

import argparse
import ast
import ctypes
import gc
import inspect
import os
import platform
import random
import re
import resource
import statistics
import sys
import textwrap
import time
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from blade.data import PreparedData  # noqa: E402
from blade.io import write_json  # noqa: E402
from blade.model.policy import Policy, PolicyConfig  # noqa: E402
from blade.sampling import ListSampler, _Chooser, _LeanLM  # noqa: E402

WORDS = ["secret", "voyage", "endless", "tower", "shadow", "kingdom", "frozen", "mirror", "last", "machine", "crimson",
         "legend", "star", "forge", "silent", "hunter", "iron", "garden", "lost", "empire", "neon", "drift", "royal",
         "quest", "ancient", "storm", "hollow", "knight", "galactic", "racer", "puzzle", "island", "dark", "souls"]
GENRES = ["action", "puzzle", "racing", "rpg", "sports", "strategy", "shooter", "adventure"]


# ---- inputs ---------------------------------------------------------------------------------------
def synthetic_items(n: int, seed: int = 0) -> pd.DataFrame:
    """A catalogue built directly as a DataFrame (item_id, title, genres); titles of 1-5 words."""
    rng = random.Random(seed)
    titles = [" ".join(rng.choice(WORDS).capitalize() for _ in range(rng.randint(1, 5))) + f" {i}" for i in range(n)]
    genres = [[rng.choice(GENRES)] for _ in range(n)]
    return pd.DataFrame({"item_id": range(n), "title": titles, "genres": genres})


def synthetic_histories(n_items: int, n: int, seed: int = 0, lo: int = 3, hi: int = 20) -> list[list[int]]:
    rng = random.Random(seed + 1)
    return [rng.sample(range(n_items), rng.randint(lo, min(hi, n_items))) for _ in range(n)]


# ---- the generate() baseline ----------------------------------------------------------------------
class PrefixAllowedTokens:
    """``prefix_allowed_tokens_fn`` for ``model.generate``: a prefix dictionary over the item codes
    (as BIGRec/D3 build it) plus the exclusion of items already in the row's list."""

    def __init__(self, codec, k: int, prompt_len: int = 0):
        self.k, self.P, self.pad = k, prompt_len, codec.pad_id
        self.codes = [tuple(c) for c in codec.codes]
        self.code_item = {c: i for i, c in enumerate(self.codes)}
        children, self.count = defaultdict(set), Counter()
        for c in self.codes:
            for n in range(len(c)):
                children[c[:n]].add(c[n])
                self.count[c[: n + 1]] += 1
        self.children = {p: sorted(s) for p, s in children.items()}
        self.seconds = 0.0  # time spent inside the callback

    def reset(self, prompt_len: int) -> "PrefixAllowedTokens":
        """Ready for one ``generate`` call on prompts left-padded to ``prompt_len``; the prefix tables
        are built once per catalogue (like BIGRec's), outside the timed calls, as our trie is."""
        self.P, self.seconds = prompt_len, 0.0
        return self

    def parse(self, gen: list[int]) -> tuple[list[tuple], tuple]:
        listed, cur = [], ()
        for t in gen:
            if len(listed) == self.k:
                break
            cur = cur + (t,)
            if cur in self.code_item:
                listed.append(cur)
                cur = ()
        return listed, cur

    def __call__(self, batch_id: int, sent: torch.Tensor) -> list[int]:
        t0 = time.perf_counter()
        listed, cur = self.parse(sent[self.P:].tolist())
        if len(listed) == self.k:
            out = [self.pad]
        else:
            n = len(cur)
            under = Counter(c[n] for c in listed if c[:n] == cur)
            blocked = {t for t, m in under.items() if m == self.count[cur + (t,)]}
            kids = self.children[cur]
            out = [t for t in kids if t not in blocked] if blocked else kids
        self.seconds += time.perf_counter() - t0
        return out

    def items(self, generated: torch.Tensor, item_ids: list[int]) -> torch.Tensor:
        rows = [self.parse(row)[0] for row in generated.tolist()]
        return torch.tensor([[item_ids[self.code_item[c]] if c in self.code_item else -1 for c in r]
                             + [-1] * (self.k - len(r)) for r in rows])


def left_pad(prompts: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(map(len, prompts))
    ids = torch.full((len(prompts), P), pad, dtype=torch.long)
    attn = torch.zeros((len(prompts), P), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, P - len(p):] = torch.tensor(p)
        attn[r, P - len(p):] = 1
    return ids.to(device), attn.to(device)


_PREFIX: dict = {}


def prefix_fn(pol: Policy, k: int) -> PrefixAllowedTokens:
    """The callback's prefix tables for this catalogue and K, built once (setup, not timed)."""
    key = (id(pol.codec), k)
    if key not in _PREFIX:
        _PREFIX.clear()
        _PREFIX[key] = PrefixAllowedTokens(pol.codec, k)
    return _PREFIX[key]


def hf_generate(pol: Policy, prompts: list[list[int]], k: int) -> tuple[torch.Tensor, float]:
    """Constrained greedy decoding with ``model.generate``; returns (items (R, K), callback seconds)."""
    ids, attn = left_pad(prompts, pol.codec.pad_id, pol.device)
    fn = prefix_fn(pol, k).reset(ids.shape[1])
    depth = max(map(len, fn.codes))
    with torch.no_grad():
        out = pol.model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=k * depth, do_sample=False,
                                 prefix_allowed_tokens_fn=fn, pad_token_id=fn.pad, eos_token_id=fn.pad)
    return fn.items(out[:, ids.shape[1]:].cpu(), pol.codec.item_ids), fn.seconds


# ---- measurement helpers --------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back, so a later peak is not hidden
    except (OSError, AttributeError):
        pass


def peak_memory_mib(fn, device: torch.device) -> tuple[float, str]:
    """Peak memory of one call of ``fn`` above what was in use when it started, in MiB."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, "cuda max_memory_allocated"
    _trim()
    base_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    base_rss = _rss_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
        reset = True
    except OSError:
        reset = False
    fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if reset and base_rss is not None:
        return max(peak - base_rss, 0) / 1024, "ru_maxrss after clear_refs reset"
    return max(peak - base_max, 0) / 1024, "ru_maxrss delta (lower bound)"


def median_time(fn, device: torch.device, repeats: int, warmup: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


# ---- step breakdown -------------------------------------------------------------------------------
class ForwardTimer:
    """Times the model's forward passes with hooks on the modules every decoding path calls, the input
    embedding and the LM head: body = embedding lookup up to the LM head (layers, final norm, mask and
    cache handling), head = the LM head; prefill (a prompt: token ids of shape (R, P>1)) and decode
    steps (one token per row: (R,) or (R, 1)) apart. Works for ``ListSampler``'s lean decoder, which
    calls the blocks' modules directly, and for a model's own ``forward``."""

    def __init__(self, model, device: torch.device):
        self.device = device
        self.t = Counter()
        self.n = Counter()
        self._start = 0.0
        self._kind = "prefill"
        emb, head = model.get_input_embeddings(), model.get_output_embeddings()
        self.handles = [emb.register_forward_pre_hook(self._body_start), head.register_forward_pre_hook(self._head_start),
                        head.register_forward_hook(self._head_end)]

    def _body_start(self, mod, args):
        x = args[0]
        self._kind = "decode" if x.dim() == 1 or x.shape[1] == 1 else "prefill"
        sync(self.device)
        self._start = time.perf_counter()

    def _head_start(self, mod, args):
        sync(self.device)
        now = time.perf_counter()
        self.t[f"{self._kind}_body"] += now - self._start
        self.n[f"{self._kind}_body"] += 1
        self._start = now

    def _head_end(self, mod, args, out):
        sync(self.device)
        self.t[f"{self._kind}_head"] += time.perf_counter() - self._start
        self.n[f"{self._kind}_head"] += 1

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def sampler_sections() -> tuple[object, dict[int, str]]:
    """Line → section of ``ListSampler._generate``: setup (incl. prefill), mask, choose, trie, forward,
    output — the in-loop sections split at the function's ``# ---- …`` comments."""
    fn = ListSampler._generate
    lines, first = inspect.getsourcelines(fn)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    loop = max((n for n in ast.walk(tree) if isinstance(n, ast.For)), key=lambda n: n.end_lineno - n.lineno)  # the step loop
    lo, hi = loop.lineno + first - 1, loop.end_lineno + first - 1
    markers = {"validity mask": "mask", "choose": "choose", "advance the trie": "trie", "cached forward": "forward"}
    section, current = {}, "loop"
    for i, text in enumerate(lines):
        ln = first + i
        if text.strip().startswith("# ----"):
            current = next((v for k, v in markers.items() if k in text), current)
        section[ln] = "setup" if ln < lo else "output" if ln > hi else ("loop" if ln == lo else current)
    return fn.__code__, section


class _Tracer:
    """sys.settrace plumbing: ``run(fn)`` calls ``self._local`` for the events of ``self.code`` only."""

    code = None

    def _local(self, frame, event, arg):
        raise NotImplementedError

    def _global(self, frame, event, arg):
        return self._local if event == "call" and frame.f_code is self.code else None

    def run(self, fn):
        sys.settrace(self._global)
        try:
            return fn()
        finally:
            sys.settrace(None)


class LineTimer(_Tracer):
    """Attributes wall time in ``ListSampler._generate`` to its sections, line by line (sys.settrace)."""

    def __init__(self, device: torch.device):
        self.code, self.section = sampler_sections()
        self.device = device
        self.t = Counter()
        self.by_line = Counter()
        self.iterations = 0
        self._last: tuple[str, float, int] | None = None
        self.loop_line = min(ln for ln, s in self.section.items() if s == "loop")

    def _local(self, frame, event, arg):
        if event in ("line", "return"):
            sync(self.device)
            now = time.perf_counter()
            if self._last is not None:
                self.t[self._last[0]] += now - self._last[1]
                self.by_line[self._last[2]] += now - self._last[1]
            if event == "line":
                self._last = (self.section.get(frame.f_lineno, "other"), now, frame.f_lineno)
                self.iterations += frame.f_lineno == self.loop_line
            else:
                self._last = None
        return self._local


class ChooseTimer(_Tracer):
    """Wall time per source line of the token choice (``blade.sampling._Chooser.__call__``; a line
    that calls a helper includes it), in runs of their own so that the section timings above carry
    no tracing cost of it."""

    def __init__(self, device: torch.device):
        self.code = _Chooser.__call__.__code__
        self.device = device
        self.by_line = Counter()
        self._last: dict[int, tuple[float, int]] = {}

    def _local(self, frame, event, arg):
        if event in ("line", "return"):
            sync(self.device)
            now = time.perf_counter()
            last = self._last.pop(id(frame), None)
            if last is not None:
                self.by_line[last[1]] += now - last[0]
            if event == "line":
                self._last[id(frame)] = (now, frame.f_lineno)
        return self._local


def _source(fn) -> dict[int, str]:
    lines, first = inspect.getsourcelines(fn)
    return {first + i: text.strip() for i, text in enumerate(lines)}


def hottest_lines(timers: list[LineTimer], choose_timers: list[ChooseTimer], iters: float, top: int = 6) -> list[dict]:
    """The sampler's own most expensive source lines, ms per step: the mask/choose/trie lines of
    ``ListSampler._generate``, with the call of the chooser replaced by the chooser's own lines."""
    gen_src, ch_src = _source(ListSampler._generate), _source(_Chooser.__call__)
    rows = []
    for ln in {ln for lt in timers for ln in lt.by_line}:
        section = timers[0].section.get(ln)
        if section in ("mask", "choose", "trie") and not (section == "choose" and "choose(" in gen_src[ln]):
            rows.append((1e3 * statistics.median(lt.by_line.get(ln, 0.0) for lt in timers) / iters, section, gen_src[ln]))
    for ln in {ln for ct in choose_timers for ln in ct.by_line}:
        rows.append((1e3 * statistics.median(ct.by_line.get(ln, 0.0) for ct in choose_timers) / iters, "choose",
                     "_Chooser: " + ch_src[ln]))
    return [{"ms_per_step": ms, "section": sec, "source": src} for ms, sec, src in sorted(rows, reverse=True)[:top]]


def breakdown(pol: Policy, sampler: ListSampler, prompts, greedy: bool, repeats: int, gen=None) -> dict:
    device = pol.device
    run = lambda: sampler.generate(prompts, greedy=greedy, generator=gen() if gen else None)  # noqa: E731
    timer = ForwardTimer(pol.model, device)
    totals, fwd = [], []
    try:
        for _ in range(repeats):
            timer.t.clear(), timer.n.clear()
            sync(device)
            t0 = time.perf_counter()
            run()
            sync(device)
            totals.append(time.perf_counter() - t0)
            fwd.append(dict(timer.t) | {f"n_{k}": v for k, v in timer.n.items()})
    finally:
        timer.remove()
    lines, chooses = [], []
    for _ in range(repeats):
        lt = LineTimer(device)
        lt.run(run)
        lines.append(lt)
    for _ in range(repeats):
        ct = ChooseTimer(device)
        ct.run(run)
        chooses.append(ct)
    med = lambda key: statistics.median(f.get(key, 0.0) for f in fwd)  # noqa: E731
    n_batches = -(-len(prompts) // sampler.batch_size)
    iters = statistics.median(lt.iterations for lt in lines)
    per_step = lambda x: 1e3 * x / iters  # noqa: E731
    sec = {k: statistics.median(lt.t.get(k, 0.0) for lt in lines) for k in ("setup", "mask", "choose", "trie", "forward", "loop", "output")}
    body, head = med("decode_body"), med("decode_head")
    prefill = statistics.median(f.get("prefill_body", 0.0) + f.get("prefill_head", 0.0) for f in fwd)
    total = statistics.median(totals)
    step_total = total - prefill
    own = sec["mask"] + sec["choose"] + sec["trie"]
    out = {
        "total_s": total, "totals_s": totals, "prefill_s": prefill, "iterations": iters,
        "decode_forwards": med("n_decode_body"), "batches": n_batches,
        "ms_per_step": {
            "body": per_step(body), "lm_head": per_step(head), "mask": per_step(sec["mask"]),
            "choose": per_step(sec["choose"]), "trie": per_step(sec["trie"]),
            "rest": per_step(max(step_total - body - head - own, 0.0)), "total": per_step(step_total),
        },
        "traced_sections_s": sec,
        "traced_total_s": statistics.median(sum(lt.t.values()) for lt in lines),
        "hottest_lines": hottest_lines(lines, chooses, iters),
    }
    tot = out["ms_per_step"]["total"]
    out["share"] = {k: v / tot for k, v in out["ms_per_step"].items() if k != "total"}
    return out


# ---- the benchmark --------------------------------------------------------------------------------
def build_policy(codec: str, items: pd.DataFrame, args) -> Policy:
    torch.manual_seed(args.seed)
    if args.model:  # a named pretrained LLM (blade/model/base_models.py), converted once if need be
        from blade.model.base_models import convert

        cfg = PolicyConfig(kind="pretrained", model=args.model, path=str(convert(args.model)), codec="title",
                           dtype=args.dtype, device=args.device)
        pol = Policy.build(cfg, items)
        pol.model.eval()
        return pol
    cfg = PolicyConfig(codec=codec, layers=args.layers, hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
                       intermediate=args.intermediate, dtype=args.dtype, device=args.device)
    pol = Policy.build(cfg, items)
    pol.model.eval()
    return pol


def decoder(pol: Policy) -> str:
    return "lean" if ListSampler.lean and _LeanLM.supports(pol.model) else "model forward"


def compare(pol: Policy, prompts, k: int, args, label: str) -> dict:
    """(a): ours (greedy) vs generate() on the same prompts; outputs asserted equal first."""
    device = pol.device
    sampler = ListSampler(pol, k=k, batch_size=len(prompts))
    ours = sampler.generate(prompts, greedy=True)
    theirs, _ = hf_generate(pol, prompts, k)
    equal = torch.equal(ours.items, theirs)
    if not equal:
        bad = int((ours.items != theirs).any(1).sum())
        msg = f"{label}: ListSampler and generate() disagree on {bad}/{len(prompts)} lists"
        if not args.allow_mismatch:
            raise SystemExit(msg + " (numerical near-ties? rerun with --allow-mismatch to time anyway)")
        print("WARNING:", msg, file=sys.stderr)
    assert ours.invalid_rate == 0.0
    t_ours, all_ours = median_time(lambda: sampler.generate(prompts, greedy=True), device, args.repeats, args.warmup)
    cb = []
    t_gen, all_gen = median_time(lambda: cb.append(hf_generate(pol, prompts, k)[1]), device, args.repeats, args.warmup)
    m_ours, how = peak_memory_mib(lambda: sampler.generate(prompts, greedy=True), device)
    m_gen, _ = peak_memory_mib(lambda: hf_generate(pol, prompts, k), device)
    bd = breakdown(pol, sampler, prompts, True, args.repeats)
    n = len(prompts)
    return {
        "contexts": n, "k": k, "items": len(pol.codec.item_ids), "equal_outputs": equal, "decoder": decoder(pol),
        "code_len_mean": sum(map(len, pol.codec.codes)) / len(pol.codec.codes),
        "ours_s": t_ours, "ours_runs_s": all_ours, "ours_lists_per_s": n / t_ours,
        "generate_s": t_gen, "generate_runs_s": all_gen, "generate_lists_per_s": n / t_gen,
        "generate_callback_share": statistics.median(cb[args.warmup:]) / t_gen if len(cb) > args.warmup else None,
        "speed_ratio": (n / t_ours) / (n / t_gen),
        "ours_peak_mib": m_ours, "generate_peak_mib": m_gen,
        "memory_ratio": m_ours / m_gen if m_gen > 0 else None, "memory_method": how, "ours_breakdown": bd,
    }


def scale(pol: Policy, prompts, k: int, args) -> dict:
    """(b): our throughput (greedy and sampled) and the step breakdown at one catalogue size."""
    device, out = pol.device, {"items": len(pol.codec.item_ids), "contexts": len(prompts), "k": k, "decoder": decoder(pol)}
    for mode in ("greedy", "sample"):
        greedy = mode == "greedy"
        sampler = ListSampler(pol, k=k, temperature=1.0, top_p=args.top_p, batch_size=args.batch)
        gen = (lambda: torch.Generator(device=device).manual_seed(args.seed))
        run = lambda: sampler.generate(prompts, greedy=greedy, generator=gen())  # noqa: E731
        lists = run()
        assert lists.invalid_rate == 0.0 and (lists.items >= 0).all()
        t, runs = median_time(run, device, args.repeats, args.warmup)
        mem, how = peak_memory_mib(run, device)
        out[mode] = {"s": t, "runs_s": runs, "lists_per_s": len(prompts) / t, "peak_mib": mem, "memory_method": how,
                     "breakdown": breakdown(pol, sampler, prompts, greedy, args.repeats, gen)}
    n_gen = len(prompts) if out["items"] <= args.gen_full_upto else min(len(prompts), args.gen_contexts_large)
    gp = prompts[:n_gen]
    ours_g = ListSampler(pol, k=k, batch_size=args.batch).generate(gp, greedy=True)
    theirs, _ = hf_generate(pol, gp, k)
    if not torch.equal(ours_g.items, theirs) and not args.allow_mismatch:
        raise SystemExit(f"{out['items']} items: ListSampler and generate() disagree")
    t_gen, runs = median_time(lambda: hf_generate(pol, gp, k), device, args.repeats, args.warmup)
    out["generate"] = {"contexts": n_gen, "s": t_gen, "runs_s": runs, "lists_per_s": n_gen / t_gen,
                       "equal_outputs": bool(torch.equal(ours_g.items, theirs))}
    out["greedy_vs_generate_ratio"] = out["greedy"]["lists_per_s"] / out["generate"]["lists_per_s"]
    return out


def fmt_table(headers: list[str], rows: list[list], left: tuple[int, ...] = ()) -> str:
    num = lambda c: f"{c:,.0f}" if abs(c) >= 100 else f"{c:.3g}"  # noqa: E731
    cells = [list(headers)] + [[num(c) if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--batch", type=int, default=256,
                    help="contexts per batch (and per timed call); 256 is what the suite decodes with "
                         "(recommend --batch-size, sft.eval_batch_size)")
    ap.add_argument("--k", type=int, default=10, help="list length")
    ap.add_argument("--ratio-items", type=int, default=1000, help="(a) catalogue size")
    ap.add_argument("--codecs", default="atomic,title", help="(a) codecs to compare")
    ap.add_argument("--sizes", default="1000,10000,100000", help="(b) catalogue sizes (atomic codec)")
    ap.add_argument("--top-p", type=float, default=1.0,
                    help="(b) nucleus for the sampled mode (1.0: the rollouts' default, align.top_p)")
    ap.add_argument("--gen-full-upto", type=int, default=10000,
                    help="(b) generate() baseline on all contexts up to this catalogue size ...")
    ap.add_argument("--gen-contexts-large", type=int, default=16, help="... and on this many above it")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--no-lean", action="store_true",
                    help="run ListSampler through the model's own forward (DynamicCache) instead of its lean decoder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allow-mismatch", action="store_true", help="time even if greedy outputs differ (bf16 near-ties)")
    ap.add_argument("--skip-a", action="store_true", help="skip part (a)")
    ap.add_argument("--skip-b", action="store_true", help="skip part (b)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one repeat")
    ap.add_argument("--model", default=None,
                    help="(a) a named pretrained LLM instead of the tiny model, title codec (e.g. smollm2-135m-instruct)")
    ap.add_argument("--data", default=None,
                    help="(a) a prepared dataset (results/data/video_games): its catalogue and the histories of its "
                         "first valid rows instead of synthetic ones")
    ap.add_argument("--out", default=None, help="write the results as JSON here (atomic write)")
    args = ap.parse_args(argv)
    if args.model:
        args.codecs, args.skip_b = "title", True  # an LLM generates titles; (b) scales the atomic tiny model
    if args.quick:
        args.batch, args.k, args.ratio_items, args.sizes, args.repeats = 4, 3, 60, "60,600", 1
        args.gen_full_upto, args.gen_contexts_large = 60, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_lean:
        ListSampler.lean = False
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    t_start = time.perf_counter()
    env = {"torch": torch.__version__, "device": args.device, "dtype": args.dtype, "threads": torch.get_num_threads(),
           "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "loadavg_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
           "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    import transformers

    env["transformers"] = transformers.__version__
    result: dict = {"config": vars(args).copy(), "env": env, "compare": {}, "scaling": {}}
    print(f"# ListSampler benchmark — {env}")
    model = args.model or f"tiny Qwen2, {args.layers} layers, hidden {args.hidden}"
    catalogue = args.data or f"synthetic, {args.ratio_items} items"
    print(f"# model: {model}; catalogue: {catalogue}; batch {args.batch}, K {args.k}; "
          f"median of {args.repeats} after {args.warmup} warm-up; ListSampler decoder: "
          f"{'model forward (--no-lean)' if args.no_lean else 'lean where the model supports it'}")

    policies: dict = {}

    def policy(codec: str, n: int, items: pd.DataFrame | None = None) -> Policy:
        """The policy over ``items`` (a prepared catalogue, key n = 0) or n synthetic items."""
        if (codec, n) not in policies:
            policies.clear()  # one catalogue at a time keeps the memory numbers clean
            _trim()
            policies[codec, n] = build_policy(codec, synthetic_items(n, args.seed) if items is None else items, args)
        return policies[codec, n]

    if not args.skip_a:
        rows = []
        prepared = PreparedData.load(args.data) if args.data else None
        for codec in args.codecs.split(","):
            if prepared is not None:
                pol = policy(codec, 0, prepared.items)
                histories = prepared.valid["history"].iloc[:args.batch].tolist()
            else:
                pol = policy(codec, args.ratio_items)
                histories = synthetic_histories(args.ratio_items, args.batch, args.seed)
            prompts = [pol.codec.prompt(h, args.k) for h in histories]
            r = compare(pol, prompts, args.k, args, codec)
            result["compare"][codec] = r
            rows.append([codec, r["items"], r["contexts"], f"{r['code_len_mean']:.1f}", r["ours_lists_per_s"],
                         r["generate_lists_per_s"], f"{r['speed_ratio']:.2f}x",
                         f"{r['generate_callback_share']:.0%}" if r["generate_callback_share"] is not None else "-",
                         f"{r['ours_peak_mib']:.1f}", f"{r['generate_peak_mib']:.1f}", r["equal_outputs"]])
        print("\n(a) greedy lists/s: ListSampler vs generate(prefix_allowed_tokens_fn) — same model, prompts, batch, K")
        print(fmt_table(["codec", "items", "contexts", "tok/item", "ours lists/s", "generate lists/s", "ratio ours/gen",
                         "gen callback", "ours peak MiB", "gen peak MiB", "equal"], rows))
        print("    ours, ms per decoding step (share):")
        cols = ("body", "lm_head", "mask", "choose", "trie", "rest")
        print(fmt_table(["codec", "steps"] + list(cols) + ["step ms"], [
            [c, f"{r['ours_breakdown']['iterations']:.0f}"]
            + [f"{r['ours_breakdown']['ms_per_step'][x]:.3f} ({r['ours_breakdown']['share'][x]:.0%})" for x in cols]
            + [f"{r['ours_breakdown']['ms_per_step']['total']:.3f}"] for c, r in result["compare"].items()]))

    if not args.skip_b:
        rows, brows, hot_rows = [], [], []
        for n in [int(s) for s in args.sizes.split(",")]:
            pol = policy("atomic", n)
            prompts = [pol.codec.prompt(h, args.k) for h in synthetic_histories(n, args.batch, args.seed)]
            r = scale(pol, prompts, args.k, args)
            result["scaling"][str(n)] = r
            g = r["generate"]
            for mode in ("greedy", "sample"):
                m = r[mode]
                rows.append([n, mode, m["lists_per_s"], 1e3 * m["s"],
                             f"{m['peak_mib']:.1f}",
                             f"{g['lists_per_s']:.3g} ({g['contexts']})" if mode == "greedy" else "",
                             f"{r['greedy_vs_generate_ratio']:.2f}x" if mode == "greedy" else ""])
                b = m["breakdown"]["ms_per_step"]
                sh = m["breakdown"]["share"]
                brows.append([n, mode] + [f"{b[c]:.3f} ({sh[c]:.0%})" for c in ("body", "lm_head", "mask", "choose", "trie", "rest")]
                             + [f"{b['total']:.3f}", max(sh, key=sh.get)])
            print(f"  [{n} items done, {time.perf_counter() - t_start:.0f}s]", file=sys.stderr)
            for mode in ("greedy", "sample"):
                hot = r[mode]["breakdown"]["hottest_lines"]
                hot_rows.extend([n, mode, f"{h['ms_per_step']:.3f}", h["section"], h["source"][:95]] for h in hot[:4])
        print(f"\n(b) throughput vs catalogue size (atomic codec, batch {args.batch}, K {args.k}; sample = "
              f"temperature 1, top-p {args.top_p})")
        print(fmt_table(["items", "mode", "lists/s", "ms/call", "peak MiB", "generate lists/s (contexts)",
                         "ratio ours/gen"], rows))
        print("\n(b) decoding-step breakdown, ms per step for the whole batch (share of the step; the prompt's prefill "
              "is not a step);\n    body/lm_head from hooks on the embedding and LM head, mask/choose/trie from a line "
              "tracer over ListSampler._generate,\n    rest = step − all of those (per-call setup and output spread over "
              "the steps, cache/mask bookkeeping, Python)")
        print(fmt_table(["items", "mode", "body", "lm_head", "mask", "choose", "trie", "rest", "step ms", "dominant"], brows))
        print("\n(b) the sampler's four most expensive own lines per setting (ms per step, line tracer; the token "
              "choice line by line)")
        print(fmt_table(["items", "mode", "ms/step", "section", "source line (ListSampler._generate or _Chooser)"], hot_rows,
                        left=(4,)))

    result["wall_s"] = time.perf_counter() - t_start
    print(f"\n# total wall time {result['wall_s']:.0f}s")
    if args.out:
        write_json(args.out, result)
        print(f"# wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
