"""Prompt set files: text, CSV, categories, and one-line errors."""

import pytest

from cli.errors import DataError
from data.prompts import Prompt, read_prompt_set, read_prompts


def test_prompt_files_skip_blanks_and_comments_and_read_a_csv_prompt_column(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("# toy prompts\na red circle\n\n  a blue square  \n#a green circle\n")
    assert read_prompts(text) == ["a red circle", "a blue square"]
    table = tmp_path / "prompts.csv"
    table.write_text('id,prompt\n1,"a cat, sleeping"\n2,\n3,a dog\n')
    assert read_prompts(table) == ["a cat, sleeping", "a dog"]
    (tmp_path / "bad.csv").write_text("id,caption\n1,a cat\n")
    with pytest.raises(DataError, match="without a 'prompt' column"):
        read_prompts(tmp_path / "bad.csv")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(DataError, match="holds no prompts"):
        read_prompts(tmp_path / "empty.txt")
    with pytest.raises(DataError, match="not found"):
        read_prompts(tmp_path / "missing.txt")


def test_categories_come_from_a_category_column_as_partiprompts_spells_it(tmp_path):
    parti = tmp_path / "PartiPrompts.tsv"
    parti.write_text("Prompt\tCategory\tChallenge\nA red bus, parked\tVehicles\tBasic\n"
                     "a haiku\t\tWriting\n")
    assert read_prompt_set(parti) == [Prompt("A red bus, parked", "Vehicles"),
                                      Prompt("a haiku")]
    table = tmp_path / "mine.csv"
    table.write_text("prompt,category\na cat,animals\n")
    assert read_prompt_set(table) == [Prompt("a cat", "animals")]
