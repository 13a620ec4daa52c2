from dataclasses import dataclass
from typing import Literal

import pytest

from blade.config import from_dict, option
from blade.data.prepare import resolve_spec
from blade.errors import ConfigError


@dataclass
class Inner:
    rate: float = option(0.5, help="a rate")


@dataclass
class Opts:
    name: str = option(help="required name")
    steps: int = option(3, help="steps")
    mode: Literal["a", "b"] = option("a", help="mode")
    tags: list[str] = option([], help="tags")
    inner: Inner = option(None, help="nested")
    flag: bool = option(False, help="flag")


def test_valid_mapping_is_coerced():
    opts = from_dict(Opts, {"name": "x", "steps": 5, "tags": ["t"], "inner": {"rate": 1}, "flag": True}, "cfg")
    assert opts.steps == 5 and opts.inner.rate == 1.0 and isinstance(opts.inner.rate, float)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "x", "stpes": 2}, "cfg.stpes: unknown option — did you mean 'steps'?"),
        ({"name": "x", "steps": "2"}, "cfg.steps: expected an integer, got str '2'"),
        ({"name": "x", "steps": True}, "cfg.steps: expected an integer"),
        ({"name": "x", "mode": "c"}, "cfg.mode: 'c' is not allowed; choose one of ['a', 'b']"),
        ({"name": "x", "tags": "t"}, "cfg.tags: expected a list"),
        ({"name": "x", "inner": {"rate": "high"}}, "cfg.inner.rate: expected a number"),
        ({"name": "x", "flag": "yes"}, "cfg.flag: expected true or false"),
        ({}, "cfg: missing required option(s) ['name']"),
        ([1, 2], "cfg: expected a mapping of options"),
    ],
)
def test_bad_config_names_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        from_dict(Opts, data, "cfg")
    assert message in str(info.value)


def test_dataset_spec_errors_name_the_dataset_key():
    with pytest.raises(ConfigError, match=r"datasets.x.source: unknown source 'csv'; valid sources: synthetic"):
        resolve_spec({"source": "csv"}, "datasets.x")
    with pytest.raises(ConfigError, match=r"datasets.x.params.n_users: expected an integer"):
        resolve_spec({"source": "synthetic", "params": {"n_users": 1.5}}, "datasets.x")
    with pytest.raises(ConfigError, match=r"datasets.x.max_histroy: unknown option — did you mean 'max_history'"):
        resolve_spec({"source": "synthetic", "max_histroy": 3}, "datasets.x")
    with pytest.raises(ConfigError, match=r"datasets.x: max_history must be >= 1"):
        resolve_spec({"source": "synthetic", "max_history": 0}, "datasets.x")
