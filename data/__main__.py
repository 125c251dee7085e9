"""`python -m data import|export|stats`: move preference pairs in and out of the store."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from cli.entry import run_main
from cli.errors import ShardError, UpgradeNeededError, report_user_error
from cli.parser import config_values, parse_command, save_config_beside
from data.config import COMMANDS, ExportConfig, ImportConfig, StatsConfig
from data.pickapic import ImportedFile, export_pairs, import_shards
from data.stats import format_stats, store_stats
from data.store import Store


def imported_line(done: ImportedFile) -> str:
    """One file's line: what it added, and the rows that added nothing."""
    if done.skipped:
        return f"{done.path}: imported before (this file, same size and time), skipped"
    notes = [f"{done.already} already stored, identical"] if done.already else []
    if done.repeated:
        notes.append(f"{done.repeated} row(s) repeating an earlier row, stored once")
    return f"{done.path}: {done.rows} rows, {done.added} new pairs" + (
        f" ({'; '.join(notes)})" if notes else ""
    )


def announce(done: ImportedFile) -> None:
    """Say what became of one shard as soon as it is done (a full disk or a kill may stop
    the import before the next one)."""
    with tqdm.external_write_mode():  # clear the progress bar, if any, around the line
        if done.refused:
            report_user_error(ShardError(f"{done.refused}; nothing of this file was imported"))
        else:
            print(imported_line(done), flush=True)


def open_to_read(db: Path) -> Store:
    """The store at `db`, read-only; a store made by an older version gets its pending
    migrations first, from a brief read-write open (DuckDB locks the file against
    other processes either way), so `stats` and `export` work on it."""
    try:
        return Store(db, read_only=True)
    except UpgradeNeededError:
        Store(db).close()
        return Store(db, read_only=True)


def import_pairs(config: ImportConfig) -> int:
    with Store(config.db) as store:
        save_config_beside(config, config.db, "import")
        done = import_shards(store, config.paths, source=config.source, split=config.split,
                             max_side=config.max_image_side, on_file=announce)
    imported = [f for f in done if not (f.refused or f.skipped)]
    rows, added = sum(f.rows for f in imported), sum(f.added for f in imported)
    refused = sum(1 for f in done if f.refused)
    skipped = len(done) - len(imported) - refused
    notes = ([f"{skipped} skipped, imported before"] if skipped else []) + (
        [f"{refused} refused (see above)"] if refused else [])
    print(f"imported {len(imported)} of {len(done)} shard(s): {rows} rows read, "
          f"{added} new pairs in {config.db}" + "".join(f"; {n}" for n in notes))
    return 1 if refused else 0


def export(config: ExportConfig) -> int:
    with open_to_read(config.db) as store:
        splits = export_pairs(
            store, config.out_dir, images=not config.no_images, shard_rows=config.shard_rows,
            overwrite=config.overwrite, question=config.question, consensus=config.consensus,
            drop_flagged=config.drop_flagged, settings=config_values(config),
            manifest=config.format == "jsonl",
        )
    summary = ", ".join(f"{s.split}: {s.rows} pairs in {len(s.files)} file(s)" for s in splits)
    print(f"exported to {config.out_dir}: {summary or 'no pairs'}")
    for split in splits:
        if split.consensus is not None:
            print(f"  {split.split} consensus: {split.consensus.text()}")
    return 0


def stats(config: StatsConfig) -> int:
    with open_to_read(config.db) as store:
        found = store_stats(store, config.question)
    print(json.dumps(asdict(found), indent=2) if config.json else format_stats(found))
    return 0


RUNS = {"import": import_pairs, "export": export, "stats": stats}


def main(argv: list[str] | None = None) -> int:
    def command(argv: list[str]) -> int:
        name, config = parse_command(COMMANDS, argv, "python -m data")
        return RUNS[name](config)

    return run_main(command, argv)


if __name__ == "__main__":
    sys.exit(main())
