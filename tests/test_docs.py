"""The docs cite only what a reader has, and stay the project's map.

README.md and docs/ are all a reader gets: a docstring or page that cites a document
outside the repository, or an issue by number, sends them nowhere.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess

from conftest import REPO

PACKAGES = ("cli", "data", "pages", "models", "annotate", "train", "eval", "rounds")
UNSEEN = re.compile(r"DESIGN\.md|shared/|\bissues? #?\d+", re.IGNORECASE)


def _tracked(*patterns: str) -> list:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                          *patterns], cwd=REPO, capture_output=True, text=True, check=True)
    return [REPO / line for line in out.stdout.splitlines() if (REPO / line).is_file()]


def test_no_doc_or_code_cites_what_a_reader_cannot_see():
    cited = []
    for path in _tracked("*.md", "*.py", "*.sh", "*.toml", "*.yaml"):
        if path.name == "test_docs.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if UNSEEN.search(line):
                cited.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not cited, "\n".join(cited)


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## `(\w+)/`, module by module$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_the_architecture_page_maps_every_module_of_every_package():
    sections = _sections((REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8"))
    assert set(sections) == set(PACKAGES)
    for package in PACKAGES:
        modules = [p for p in (REPO / package).glob("*.py") if p.name != "__init__.py"]
        missing = [p.name for p in modules if f"`{p.name}`" not in sections[package]
                   and f"{p.name}:" not in sections[package]]
        assert not missing, f"docs/ARCHITECTURE.md's {package}/ section lacks {missing}"
    assert "later" not in (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")


def _imports_diffusers(path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "diffusers"
                                                for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "diffusers":
            return True
    return False


def test_the_model_layer_says_truly_who_else_touches_diffusers():
    import models

    outside = {str(p.relative_to(REPO)) for package in PACKAGES if package != "models"
               for p in (REPO / package).rglob("*.py") if _imports_diffusers(p)}
    named = set(re.findall(r"\((\w+/\w+\.py)\)", models.__doc__))
    assert outside == named, f"diffusers is imported by {sorted(outside)}; the docstring " \
                             f"names {sorted(named)}"


def test_the_annotate_page_states_the_toy_models_real_prompt_window():
    config = REPO / "models" / "toy" / "pipeline" / "tokenizer" / "tokenizer_config.json"
    window = json.loads(config.read_text())["model_max_length"] - 2  # start and end tokens
    stated = re.findall(r"(\d+) for the toy model",
                        (REPO / "docs" / "ANNOTATE.md").read_text(encoding="utf-8"))
    assert stated == [str(window)]
