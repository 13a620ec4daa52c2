"""pyproject.toml and environment.yml pin the same versions, and torch is the pinned release."""

import re
import tomllib

import yaml

from tests.conftest import ROOT


def test_environment_yml_mirrors_pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {re.split("==", d)[0].lower(): d for d in project["dependencies"]}
    assert all("==" in d for d in pins.values()), "every runtime dependency must be pinned exactly"
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = {re.split("==", d)[0].lower(): d for d in pip if "==" in d}
    assert conda_pins == pins
    assert pins["torch"] == "torch==2.13.0"
