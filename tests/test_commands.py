"""The command-line entry points: every command explains its flags (in process: `--help`
is argparse's, printed and exit 0)."""

import pytest


def help_text(main, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--help"])
    assert stopped.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["import", "export", "stats"])
def test_every_data_command_explains_its_flags(command, capsys):
    from data.__main__ import main

    out = help_text(main, [command], capsys)
    assert "--db DB" in out and "runs/prefs.duckdb" in out and "--config FILE" in out


def test_the_data_command_lists_its_commands(capsys):
    from data.__main__ import main

    out = help_text(main, [], capsys)
    assert "import " in out and "export " in out and "stats " in out


@pytest.mark.parametrize("module, argv, flags", [
    ("annotate.__main__", [], ["--model", "--db", "--host", "--port", "--prompts", "--auth"]),
    ("eval.__main__", [], ["--base", "--aligned", "--prompts", "python -m eval auto"]),
    ("eval.__main__", ["auto"], ["--scorer", "--also", "--tie-margin", "(default: 0.0)"]),
    ("eval.__main__", ["leaderboard"], ["--models", "--names", "--prior"]),
    ("eval.__main__", ["report"], ["--db", "--question"]),
])
def test_every_app_explains_its_flags(module, argv, flags, capsys):
    import importlib

    out = help_text(importlib.import_module(module).main, argv, capsys)
    for flag in flags:
        assert flag in out
