"""The `blade` command as a user calls it: clear one-line errors, exit status 2, nothing written."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def blade(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "blade.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_prepare_from_config_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("datasets:\n  small:\n    source: synthetic\n    params: {n_users: 50, n_items: 30}\n")
    done = blade("prepare", "--config", str(config), "--dataset", "small", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "30 items; rows: train" in done.stdout
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["n_rows"]["test"] == 50


@pytest.mark.parametrize(
    "args, message",
    [
        (["--spec", '{"source": "movielens"}'], "--spec.source: unknown source 'movielens'; valid sources: synthetic, bigrec_csv"),
        (["--spec", '{"source": "synthetic", "params": {"n_users": "many"}}'], "--spec.params.n_users: expected an integer, got str 'many'"),
        (["--spec", "{source: synthetic}"], "--spec: not valid JSON"),
        (["--spec", '{"source": "bigrec_csv", "params": {"path": "no/such/dir"}}'], "--spec.params.path: data path 'no/such/dir' does not exist"),
        (["--config", "missing.yaml", "--dataset", "x"], "config file missing.yaml does not exist"),
        (["--config", "config/config.yaml", "--dataset", "nope"], "datasets.nope is not defined; defined: ["),
    ],
)
def test_prepare_errors_are_one_clear_line(tmp_path, args, message):
    done = blade("prepare", *args, "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_options_lists_source_params():
    done = blade("options", "synthetic")
    assert done.returncode == 0 and "| `n_items` | `300` |" in done.stdout


@pytest.mark.parametrize("name, row", [("align", "| `group_size` | `8` |"), ("blade", "| `kappa0` | `4.0` |"),
                                       ("reward", "| `weights` |")])
def test_options_lists_sections_and_objectives(name, row):
    done = blade("options", name)
    assert done.returncode == 0 and row in done.stdout, done.stdout


def test_options_unknown_name_is_a_clear_error():
    done = blade("options", "bladee")
    assert done.returncode == 2 and "unknown name 'bladee'" in done.stderr and "blade" in done.stderr
