"""Evaluation's options and the names of the rows no alignment method produces (torch-free, so
that validating a config never imports torch).

Row names: ``sft`` (π_ref), the classic references (:data:`REFERENCE_ROWS`), the Best-of-N rows
over π_ref (``bon_n{N}``, ``oracle_bon_n{N}``) and external rows (recommendations made by another
codebase, ``evaluate.external``). Rows trained under no reward setting live under the reward
directory :data:`NO_REWARD`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from blade.config import option

ReferenceRow = Literal["mostpop", "cooc", "sasrec"]
# Rows of the tables that no alignment method produces: the SFT start and the classic references.
REFERENCE_ROWS: tuple[str, ...] = get_args(ReferenceRow)
UNALIGNED_ROWS = ("sft", *REFERENCE_ROWS)
# Best-of-N over π_ref at inference: by the inference reward, and by the ground truth (the oracle)
BON_KINDS = ("bon", "oracle_bon")
# The reward-setting directory of rows trained under no reward setting (SFT, references, external rows).
NO_REWARD = "none"
EvalSplit = Literal["valid", "test"]
# The keys of a row's cost.json (what one user's lists cost at inference; blade/eval/lists.py)
COST_KEYS = ("samples_per_user", "tokens_per_user", "seconds_per_user")


@dataclass
class ExternalRow:
    """Recommendations made outside this suite (another repository's model), scored like every row."""

    path: str = option(help="the recommendations file of one split (and seed): JSON lines {\"row\": r, \"items\": "
                            "[ids]} (`blade evaluate`), a path holding {split} and, where there is more than one, "
                            "{dataset} and {seed}, e.g. 'external/{dataset}/{split}_seed{seed}.jsonl'; relative "
                            "to where snakemake runs. Cost per user, when known: a cost.json beside the file "
                            "named like it (test_seed0.jsonl -> test_seed0.cost.json)")
    seeds: list[int] = option([], help="the seeds files exist for ({seed} in path); [] = run.seeds if the path holds "
                                       "{seed}, else seed 0 only")

    def __post_init__(self) -> None:
        if "{split}" not in self.path:
            raise ValueError(f"path {self.path!r} must hold {{split}}: one file per evaluation split")
        if any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be >= 0, got {self.seeds}")
        if self.seeds and "{seed}" not in self.path:
            raise ValueError(f"seeds {self.seeds} given but path {self.path!r} holds no {{seed}}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")

    def seeds_for(self, run_seeds: list[int]) -> tuple[int, ...]:
        """The seeds this row has files for: ``seeds``; if none are given, every run seed when the
        path holds {seed}, else seed 0 only (one file per split, like a reference row)."""
        if self.seeds:
            return tuple(self.seeds)
        return tuple(run_seeds) if "{seed}" in self.path else (0,)

    def path_for(self, dataset: str, split: str, seed: int) -> str:
        """The file of one (dataset, split, seed). Placeholders are replaced, not ``str.format``ted,
        so other braces in a path stay as they are."""
        return self.path.replace("{dataset}", dataset).replace("{split}", split).replace("{seed}", str(seed))

    @staticmethod
    def cost_path(recs: str) -> str:
        """The cost sidecar of a recommendations file: its name with the last suffix replaced by
        ``.cost.json`` (test_seed0.jsonl -> test_seed0.cost.json); for a row this suite scored (another
        run's ``…/{split}/recs.jsonl``, e.g. config/llm_vs_tiny.yaml's), the ``cost.json`` beside it."""
        from pathlib import Path

        path = Path(recs)
        return str(path.with_name("cost.json") if path.name == "recs.jsonl" else path.with_suffix(".cost.json"))


@dataclass
class EvalConfig:
    k: int = option(20, help="length of the evaluated lists")
    ks: list[int] = option([5, 10, 20], help="metric cut-offs (each <= k); model selection reads the same cut-offs")
    splits: list[EvalSplit] = option(["valid", "test"], help="splits to evaluate after training")
    references: list[ReferenceRow] = option(
        ["mostpop", "cooc"], help="reference rows: most popular, item co-occurrence, SASRec (blade/eval/sasrec.py)")
    selection_rows: int = option(1000, help="valid rows SFT early-stops on (the first rows of a fixed, seed-independent "
                                            "permutation of valid, at most half of it; 0 = all, leaving none "
                                            "for alignment)")
    align_selection_rows: int = option(0, help="valid rows alignment selects its step on: the permutation's rows after "
                                               "SFT's, disjoint from them (blade/eval/selection.py); 0 = every one left")
    batch_size: int = option(256, help="contexts per sampler batch when decoding for evaluation and selection")
    samples: int = option(4, help="sampled evaluation: S independent lists per row at temperature 1, metrics averaged "
                                  "(BoN alignment promises single-sample quality); 0 = greedy only")
    bon_n: list[int] = option([1, 2, 4, 8, 16], help="Best-of-N rows over π_ref: `bon_n{N}` (inference reward) and "
                                                     "`oracle_bon_n{N}` (ground truth) for each N; [] = none")
    inference_splits: list[EvalSplit] = option(
        ["test"], help="splits that get the sampled evaluation and the Best-of-N rows")
    external: dict[str, ExternalRow] = option(
        {}, help="rows from outside the suite: {NAME: {path: '…/{split}_seed{seed}.jsonl'}}, scored on every "
                 "evaluate.splits and put in every table, test and figure like any row (README: compare your own model)")

    def __post_init__(self) -> None:
        if self.k < 1 or any(not 1 <= k <= self.k for k in self.ks) or not self.ks:
            raise ValueError(f"every cut-off in ks must lie in 1..k={self.k}, got {self.ks}")
        if min(self.selection_rows, self.align_selection_rows, self.samples) < 0 or self.batch_size < 1:
            raise ValueError("selection_rows, align_selection_rows and samples must be >= 0 and batch_size >= 1")
        if any(n < 1 for n in self.bon_n) or len(set(self.bon_n)) != len(self.bon_n):
            raise ValueError(f"bon_n must hold distinct N >= 1, got {self.bon_n}")

    @property
    def table_split(self) -> str:
        """The split the tables and snapshot curves read: test (model selection never reads it);
        valid if a config drops test."""
        return "test" if "test" in self.splits else self.splits[-1]

    @property
    def bon_rows(self) -> list[str]:
        """The Best-of-N row names: ``bon_n{N}`` and ``oracle_bon_n{N}``."""
        return [f"{kind}_n{n}" for kind in BON_KINDS for n in self.bon_n]
