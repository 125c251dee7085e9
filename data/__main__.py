"""`python -m data import|export|stats`: move preference pairs in and out of the store."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from data.errors import (
    DataError,
    ShardError,
    UpgradeNeededError,
    UserError,
    report_user_error,
)
from data.images import MAX_SIDE
from data.pickapic import ImportedFile, export_pairs, import_shards
from data.stats import format_stats, store_stats
from data.store import DEFAULT_DB, QUESTIONS, Store


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data", description="The preference store: import, export, stats."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    imp = commands.add_parser(
        "import",
        help="import Pick-a-Pic v1/v2 parquet shards (public ones or our exports)",
        description="Import parquet shards in the Pick-a-Pic v1/v2 schema (images inline). "
        "Each file is all-or-nothing: a file with a bad row is refused with its row and "
        "problem, and the other files still import. Importing a shard again adds nothing.",
    )
    imp.add_argument("paths", nargs="+", metavar="SHARD_OR_DIR", help="files or folders")
    imp.add_argument("--db", type=Path, default=DEFAULT_DB, help="store file (%(default)s)")
    imp.add_argument(
        "--source", default="public:pickapic",
        help="provenance recorded for these pairs (%(default)s)",
    )
    imp.add_argument(
        "--split", default=None,
        help="split for every row (default: from the folder or file name, else train)",
    )
    imp.add_argument(
        "--max-image-side", type=int, default=MAX_SIDE, metavar="PX",
        help="refuse an image that declares more pixels a side (%(default)s)",
    )

    exp = commands.add_parser(
        "export",
        help="export preference pairs as Pick-a-Pic v2 parquet shards",
        description="Write OUT_DIR/<split>/<split>-NNNNN-of-NNNNN.parquet with exactly the "
        "pickapic_v2 columns. Ties are 0.5/0.5 with best_image_uid 'none'; both-bad and "
        "skipped votes are not pairs and are not exported.",
    )
    exp.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    exp.add_argument("--db", type=Path, default=DEFAULT_DB, help="store file (%(default)s)")
    exp.add_argument(
        "--no-images", action="store_true",
        help="leave out jpg_0/jpg_1, like the public pickapic_v2_no_images",
    )
    exp.add_argument(
        "--shard-rows", type=int, default=1000, help="rows per parquet file (%(default)s)"
    )
    exp.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    exp.add_argument("--question", default="preference", choices=list(QUESTIONS),
                     help="which question's votes to export (%(default)s)")
    exp.add_argument("--consensus", action="store_true",
                     help="one row per pair, labelled as most of its votes say (no majority: "
                     "a tie), instead of one row per vote")
    exp.add_argument("--drop-flagged", action="store_true",
                     help="leave out the votes of annotators that `stats` flags")

    st = commands.add_parser(
        "stats",
        help="pairs by source, outcome, user and model; tie, both-bad and left-side rates; "
        "the crowd's agreement, each annotator's quality and who is flagged",
    )
    st.add_argument("--db", type=Path, default=DEFAULT_DB, help="store file (%(default)s)")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st.add_argument("--question", default="preference", choices=list(QUESTIONS),
                    help="the question whose votes agreement and annotator quality read "
                    "(%(default)s)")
    return parser


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


def run(args: argparse.Namespace) -> int:
    if args.command == "import":
        if args.max_image_side < 1:
            raise DataError("--max-image-side must be at least 1")
        with Store(args.db) as store:
            done = import_shards(store, args.paths, source=args.source, split=args.split,
                                 max_side=args.max_image_side, on_file=announce)
        imported = [f for f in done if not (f.refused or f.skipped)]
        rows, added = sum(f.rows for f in imported), sum(f.added for f in imported)
        refused = sum(1 for f in done if f.refused)
        skipped = len(done) - len(imported) - refused
        notes = ([f"{skipped} skipped, imported before"] if skipped else []) + (
            [f"{refused} refused (see above)"] if refused else [])
        print(f"imported {len(imported)} of {len(done)} shard(s): {rows} rows read, "
              f"{added} new pairs in {args.db}" + "".join(f"; {n}" for n in notes))
        return 1 if refused else 0
    elif args.command == "export":
        if args.shard_rows < 1:
            raise DataError("--shard-rows must be at least 1")
        with open_to_read(args.db) as store:
            splits = export_pairs(
                store, args.out_dir, images=not args.no_images,
                shard_rows=args.shard_rows, overwrite=args.overwrite, question=args.question,
                consensus=args.consensus, drop_flagged=args.drop_flagged,
            )
        summary = ", ".join(f"{s.split}: {s.rows} pairs in {len(s.files)} file(s)" for s in splits)
        print(f"exported to {args.out_dir}: {summary or 'no pairs'}")
        for split in splits:
            if split.consensus is not None:
                print(f"  {split.split} consensus: {split.consensus.text()}")
    elif args.command == "stats":
        with open_to_read(args.db) as store:
            stats = store_stats(store, args.question)
        print(json.dumps(asdict(stats), indent=2) if args.json else format_stats(stats))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as error:
        return report_user_error(error)


if __name__ == "__main__":
    sys.exit(main())
