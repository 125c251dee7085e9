"""The command shape (cli/): a config dataclass read from flags and a config file, one-line
errors, the resolved config written back, and one entry wrapper. In-process: the parser
and `main` are plain functions."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from cli.entry import run_main
from cli.errors import UsageError, UserError
from cli.parser import parse, parse_command
from data.__main__ import main as data_main
from data.config import COMMANDS, ExportConfig, ImportConfig, StatsConfig
from data.pickapic import EXPORT_CONFIG
from data.store import Store
from tests.helpers import public_shard_table, record, saved_config_gives


def test_flags_take_dashes_or_underscores_and_bools_three_ways():
    name, config = parse_command(COMMANDS, ["export", "out", "--shard-rows", "7",
                                            "--no-images", "--drop_flagged", "true",
                                            "--consensus", "false"], "python -m data")
    assert name == "export"
    assert config == ExportConfig(out_dir=Path("out"), shard_rows=7, no_images=True,
                                  drop_flagged=True, consensus=False)


def test_a_config_file_sets_defaults_that_flags_override(tmp_path):
    file = tmp_path / "import.yaml"
    file.write_text(yaml.safe_dump({"paths": ["a.parquet", "shards"], "db": "x.duckdb",
                                    "max-image-side": "512", "split": "test"}))
    assert parse(ImportConfig, ["--config", str(file)], "p") == ImportConfig(
        paths=["a.parquet", "shards"], db=Path("x.duckdb"), max_image_side=512, split="test")
    assert parse(ImportConfig, ["b.parquet", "--config", str(file), "--split", "train"],
                 "p") == ImportConfig(paths=["b.parquet"], db=Path("x.duckdb"),
                                      max_image_side=512, split="train")
    json_file = tmp_path / "stats.json"
    json_file.write_text('{"json": true, "question": "appeal"}')
    assert parse(StatsConfig, ["--config", str(json_file)], "p") == StatsConfig(
        json=True, question="appeal")


@pytest.mark.parametrize("argv, message", [
    (["stats", "--jsn"], "python -m data stats: unknown flag --jsn: use --json, the nearest "
                         "(python -m data stats --help lists every setting)"),
    (["export", "out", "--shard-rows", "0"], "--shard-rows must be at least 1"),
    (["export", "out", "--question", "beauty"], "python -m data export: argument --question: "
     "invalid choice: 'beauty' (choose from 'preference', 'appeal', 'alignment') "
     "(python -m data export --help lists every setting)"),
    (["import"], "python -m data import: the following arguments are required: SHARD_OR_DIR "
                 "(python -m data import --help lists every setting)"),
    (["stat"], "python -m data: unknown command 'stat': one of import, export, stats "
               "(python -m data --help says what each does)"),
])
def test_a_bad_flag_is_one_line_naming_the_fix(argv, message, capsys):
    assert data_main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err == f"error: {message}\n" and captured.out == ""


@pytest.mark.parametrize("values, message", [
    ({"pathz": ["a"]}, "unknown key 'pathz': use paths, the nearest"),
    ({"paths": ["a"], "max_image_side": "wide"}, "max_image_side: invalid literal for int()"),
])
def test_a_bad_config_file_is_one_line_naming_the_key(tmp_path, values, message):
    file = tmp_path / "import.yaml"
    file.write_text(yaml.safe_dump(values))
    with pytest.raises(UsageError, match=f"^{file}: {message}".replace("(", r"\(")
                       .replace(")", r"\)")):
        parse(ImportConfig, ["--config", str(file)], "p")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(UsageError, match="must hold a mapping of settings to values"):
        parse(ImportConfig, ["--config", str(tmp_path / "list.yaml")], "p")


def test_export_writes_its_resolved_config_and_that_file_repeats_the_export(tmp_path, capsys):
    db = tmp_path / "prefs.duckdb"
    with Store(db) as store:
        for k in range(5):
            record(store, f"prompt {k}", "left" if k % 2 else "right")
    out = tmp_path / "out"
    assert data_main(["export", str(out), "--db", str(db), "--shard-rows", "2",
                      "--no-images"]) == 0
    saved = yaml.safe_load((out / EXPORT_CONFIG).read_text())
    assert saved == {"out_dir": str(out), "db": str(db), "no_images": True, "shard_rows": 2,
                     "overwrite": False, "question": "preference", "consensus": False,
                     "drop_flagged": False, "format": "parquet"}
    first = pq.read_table(out / "train")
    assert first.num_rows == 5 and "jpg_0" not in first.column_names

    again = tmp_path / "again.yaml"
    again.write_text((out / EXPORT_CONFIG).read_text())
    assert data_main(["export", "--config", str(again), "--overwrite"]) == 0
    assert pq.read_table(out / "train").equals(first)
    assert len(list((out / "train").glob("*.parquet"))) == 3  # 2 + 2 + 1 rows
    assert "exported to" in capsys.readouterr().out


def test_the_commands_that_write_one_file_save_their_config_beside_it(tmp_path, capsys):
    """import, feedback and pool write into a store, the toy's evaluation into its --out file: each
    saves the settings it ran with beside that file (STEM.COMMAND.yaml), a file --config
    takes back. (Train, export, the reports, the pages and rounds: their own tests.)"""
    from annotate.__main__ import main as annotate_main
    from annotate.config import FeedbackConfig, PoolConfig
    from models.toy.evaluate import EvaluateConfig
    from models.toy.evaluate import main as evaluate_main

    shard = tmp_path / "train-0.parquet"
    pq.write_table(public_shard_table([("a red circle", 1.0, 0.0)], image_size=16), shard)
    db = tmp_path / "prefs.duckdb"
    given = [str(shard), "--db", str(db), "--source", "mine"]
    assert data_main(["import", *given]) == 0
    assert saved_config_gives(tmp_path / "prefs.import.yaml", ImportConfig, given)

    given = ["--pairs", "2", "--per-prompt", "2", "--steps", "2", "--db", str(db),
             "--no-progress"]
    assert annotate_main(["feedback", *given]) == 0
    assert saved_config_gives(tmp_path / "prefs.feedback.yaml", FeedbackConfig, given)
    assert annotate_main(["pool", *given]) == 0
    assert saved_config_gives(tmp_path / "prefs.pool.yaml", PoolConfig, given)

    given = ["--pairs", "2", "--steps", "2", "--out", str(tmp_path / "adherence.json")]
    assert evaluate_main(given) == 0
    assert saved_config_gives(tmp_path / "adherence.evaluate.yaml", EvaluateConfig, given)
    capsys.readouterr()


def test_the_entry_wrapper_gives_one_line_for_a_user_error_and_130_for_a_stop(capsys):
    def refuse(argv):
        raise UserError(f"cannot use\n  {argv[0]}")

    def stop(argv):
        raise KeyboardInterrupt

    assert run_main(refuse, ["this"]) == 1
    assert capsys.readouterr().err == "error: cannot use this\n"
    assert run_main(stop, []) == 130
    assert run_main(lambda argv: None, []) == 0


def test_sigterm_stops_a_command_as_ctrl_c_does_and_its_cleanup_runs(tmp_path):
    """A real process: SIGTERM mid-command, the command's `finally` runs, exit 130."""
    script = ("import os, signal, sys, time\n"
              "from cli.entry import run_main\n"
              "def command(argv):\n"
              "    try:\n"
              "        print('started', flush=True)\n"
              "        time.sleep(60)\n"
              "    finally:\n"
              "        open(argv[0], 'w').write('closed')\n"
              "sys.exit(run_main(command))\n")
    marker = tmp_path / "closed"
    process = subprocess.Popen([sys.executable, "-c", script, str(marker)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "started\n"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 130
    assert marker.read_text() == "closed"
