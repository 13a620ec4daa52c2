"""What produced these results → ``results/tables/provenance.md``: the git commit (and whether the
tree had uncommitted changes), library versions, the resolved experiment config (every default
filled in), and the commits and config hashes the runs under ``results/models`` recorded in their
``run_info.json`` — so a table built from runs of several commits says so.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import yaml

from analysis.common import load_experiment, markdown, parser, read_json, run_cli, write_markdown


def recorded_runs(results: str | Path) -> Counter:
    """(git commit, dirty) → number of runs whose run_info.json recorded it."""
    seen: Counter = Counter()
    for path in Path(results).glob("models/**/run_info.json"):
        tags = read_json(path).get("tags", {})
        seen[(str(tags.get("git_commit", "unknown")), "yes" if tags.get("dirty") == "true" else "no")] += 1
    return seen


def provenance(results, exp, raw_config: dict) -> str:
    from blade.tracking import run_metadata

    meta = run_metadata(raw_config)
    resolved = json.loads(json.dumps(dataclasses.asdict(exp), default=str))
    runs = recorded_runs(results)
    lines = ["# Provenance\n", f"- git commit: `{meta['git_commit']}`"
             + (" (with uncommitted changes)" if meta["git_dirty"] else ""),
             f"- config hash: `{meta['config_hash']}` (sha256 of the config as given)", ""]
    lines += ["## Library versions\n", markdown(["library", "version"], sorted(meta["versions"].items()))]
    lines += ["## Commits recorded by the runs (results/models/**/run_info.json)\n"]
    lines += [markdown(["commit", "dirty", "runs"], [[c, d, str(n)] for (c, d), n in sorted(runs.items())])
              if runs else "No run_info.json found.\n"]
    if len(runs) > 1:
        lines.append("**The runs come from more than one commit or tree state.**\n")
    lines += ["## Resolved config\n", "```yaml", yaml.safe_dump(resolved, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--out", default="results/tables/provenance.md", help="the Markdown file to write")
    args = p.parse_args(argv)
    exp = load_experiment(args)
    raw = json.loads(args.config_json) if args.config_json else {"config_files": args.config}
    write_markdown(args.out, provenance(args.results, exp, raw))
    print(f"provenance written to {args.out}")


if __name__ == "__main__":
    run_cli(main)
