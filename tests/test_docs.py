"""The repository carries its own docs: it cites no design file outside itself,
every relative link in the Markdown docs leads to a file that exists, and the
paths, migrations and module lists the docs name are the ones that exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"DESIGN(\.md)?\b|/work/shared|\.\./shared")


def _tracked(*patterns: str) -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [ROOT / name for name in listed.stdout.split() if (ROOT / name).is_file()]


def test_it_cites_no_design_file_outside_the_repository() -> None:
    this = Path(__file__).resolve()
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _tracked()
        if path.resolve() != this and path.suffix in {".py", ".md", ".toml", ".cfg", ".txt", ""}
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert hits == []


def test_relative_links_in_the_docs_resolve() -> None:
    broken = []
    for page in _tracked("*.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []


# A repository path in prose: a top-level package or folder, then a path.
NAMED_PATH = re.compile(
    r"(?<![\w./-])((?:planner|allocator|agent|contract|demo|bench|tests|deploy|docs|templates)"
    r"/[\w./-]*\w)"
)
NAMED_MIGRATION = re.compile(r"\b(\d{4}_[a-z][a-z0-9_]*)\b")


def test_every_path_the_docs_and_code_name_exists() -> None:
    """Docs (and comments) naming a module that was renamed or never made, such
    as a ``planner/schedules.py``, fail here rather than mislead a reader."""
    missing = [
        f"{path.relative_to(ROOT)}:{number}: {named}"
        for path in _tracked("*.md", "*.py")
        if path.resolve() != Path(__file__).resolve()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        for named in NAMED_PATH.findall(line)
        if not any(mark in named for mark in "*<>{}") and not (ROOT / named).exists()
    ]
    assert missing == []


def test_every_migration_the_docs_name_exists() -> None:
    """A migration named in the docs or the planner's code is one of its files
    (the docs once said ``0005_live_loop`` for ``0006_live_loop``)."""
    migrations = {path.stem for path in (ROOT / "planner/migrations").glob("0*.py")}
    sources = [
        path
        for path in _tracked("*.md", "planner/*.py", "planner/**/*.py")
        if "migrations" not in path.parts
    ]
    wrong = [
        f"{path.relative_to(ROOT)}:{number}: {named}"
        for path in sources
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        for named in NAMED_MIGRATION.findall(line)
        if named not in migrations
    ]
    assert wrong == []


def test_the_lists_of_services_modules_are_complete() -> None:
    """docs/architecture.md and the package's docstring name every services module."""
    modules = {
        path.stem for path in (ROOT / "planner/services").glob("*.py") if path.stem != "__init__"
    }
    rules = (ROOT / "docs/architecture.md").read_text()
    listed = rules[rules.index("- Writes only in `planner/services/`") :].split("\n- ")[0]
    assert modules - set(re.findall(r"`(\w+)`", listed)) == set()
    docstring = (ROOT / "planner/services/__init__.py").read_text().split('"""')[1]
    assert modules - set(re.findall(r"``(\w+)``", docstring)) == set()
