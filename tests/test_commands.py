"""The command-line entry points: every command explains its flags."""

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


@pytest.mark.parametrize(
    "command, flags",
    [
        (["annotate"], ["--model", "--db", "--host", "--port", "--prompts", "--auth"]),
        (["eval"], ["--base", "--aligned", "--prompts"]),
    ],
)
def test_every_app_explains_its_flags(command, flags):
    out = run(*command, "--help")
    assert out.returncode == 0, out.stderr
    for flag in flags:
        assert flag in out.stdout
