"""The command-line entry points: help for every data command, honest placeholders."""

import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)


@pytest.mark.parametrize("command", ["import", "export", "stats"])
def test_every_data_command_explains_its_flags(command):
    out = run("data", command, "--help")
    assert out.returncode == 0
    assert "--db" in out.stdout and "runs/prefs.duckdb" in out.stdout


@pytest.mark.parametrize("app", ["annotate", "eval"])
def test_unbuilt_apps_say_so_in_one_line_and_fail(app):
    out = run(app)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and "not built yet" in out.stderr
