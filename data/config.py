"""What `python -m data import|export|stats` take: one frozen dataclass per command.

Flags, `--config FILE` and the checks come from these fields (cli/parser.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cli.errors import UsageError
from cli.parser import setting
from data.images import MAX_SIDE
from data.store import DEFAULT_DB, QUESTIONS

_STORE_HELP = "the store file"


@dataclass(frozen=True)
class ImportConfig:
    """Import parquet shards in the Pick-a-Pic v1/v2 schema (public ones or our exports),
    JSONL pair manifests (prompt, chosen, rejected image paths; optional label, split,
    annotator) and HPDv3's JSON files (prompt, path1 preferred, path2).

    Each file is all-or-nothing: a file with a bad row is refused with its row (a
    manifest: its line) and problem, and the other files still import. Importing a file
    again adds nothing.
    """

    paths: list[str] = setting("parquet files, .jsonl manifests or HPDv3 .json files, or "
                               "folders of them", positional=True, metavar="SHARD_OR_DIR")
    db: Path = setting(_STORE_HELP, DEFAULT_DB)
    source: str = setting("provenance recorded for these pairs", "public:pickapic")
    split: str | None = setting("split for every row (default: from the folder or file "
                                "name, else train)", None)
    max_image_side: int = setting("refuse an image that declares more pixels a side",
                                  MAX_SIDE, metavar="PX")

    def __post_init__(self):
        if self.max_image_side < 1:
            raise UsageError("--max-image-side must be at least 1")


@dataclass(frozen=True)
class ExportConfig:
    """Export preference pairs as Pick-a-Pic v2 parquet shards, or as JSONL manifests.

    Parquet (the default) writes OUT_DIR/<split>/<split>-NNNNN-of-NNNNN.parquet with exactly
    the pickapic_v2 columns; ties are 0.5/0.5 with best_image_uid 'none'. `--format jsonl`
    writes OUT_DIR/<split>.jsonl (prompt, chosen, rejected, label, split, annotator, ...)
    with the images under OUT_DIR/images/; ties are label 0.5. Both-bad and skipped votes
    are not pairs and are not exported.
    """

    out_dir: Path = setting("the folder to write", positional=True, metavar="OUT_DIR")
    db: Path = setting(_STORE_HELP, DEFAULT_DB)
    no_images: bool = setting("leave out jpg_0/jpg_1, like the public "
                              "pickapic_v2_no_images", False)
    shard_rows: int = setting("rows per parquet file", 1000)
    overwrite: bool = setting("replace a non-empty OUT_DIR", False)
    question: str = setting("which question's votes to export", "preference",
                            choices=list(QUESTIONS))
    consensus: bool = setting("one row per pair, labelled as most of its votes say (no "
                              "majority: a tie), instead of one row per vote", False)
    drop_flagged: bool = setting("leave out the votes of annotators that `stats` flags",
                                 False)
    format: str = setting("parquet (Pick-a-Pic v2 shards) or jsonl (a manifest per split "
                          "of prompt, chosen and rejected image paths, images beside it)",
                          "parquet", choices=["parquet", "jsonl"])

    def __post_init__(self):
        if self.shard_rows < 1:
            raise UsageError("--shard-rows must be at least 1")
        if self.format == "jsonl" and self.no_images:
            raise UsageError("a JSONL manifest names its image files, which the export "
                             "writes beside it: leave out --no-images")


@dataclass(frozen=True)
class StatsConfig:
    """Pairs by source, outcome, user and model; tie, both-bad and left-side rates; the
    crowd's agreement, each annotator's quality and who is flagged."""

    db: Path = setting(_STORE_HELP, DEFAULT_DB)
    json: bool = setting("print JSON instead of a table", False)
    question: str = setting("the question whose votes agreement and annotator quality "
                            "read", "preference", choices=list(QUESTIONS))


COMMANDS = {"import": ImportConfig, "export": ExportConfig, "stats": StatsConfig}
