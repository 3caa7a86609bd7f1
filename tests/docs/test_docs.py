"""The documentation says only what is true of the code: every dotted SDK name it quotes imports, the
configuration reference is what the schemas generate, every command it shows names a real `ai4hi`
command, and the quick commands run as written (on a fresh copy of the repository's files)."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
DOTTED = re.compile(r"`(ai4hi_sdk(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
FENCE = re.compile(r"```bash\n(.*?)```", re.S)


def _resolve(dotted: str) -> object:
    """Import the longest module prefix of ``dotted`` and walk the rest as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def _quoted_names() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for name in sorted(set(DOTTED.findall(page.read_text()))):
            found.append((page.relative_to(REPO).as_posix(), name.rstrip(".")))
    return found


@pytest.mark.parametrize("page,name", _quoted_names())
def test_every_quoted_sdk_name_exists(page, name):
    _resolve(name)


def test_the_configuration_reference_is_generated_from_the_schemas():
    result = subprocess.run([sys.executable, str(REPO / "docs" / "reference" / "generate.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _commands() -> list[tuple[str, list[str]]]:
    """Every `ai4hi ...` line of the pages' bash blocks (continuations joined, comments dropped)."""
    found = []
    for page in PAGES:
        for block in FENCE.findall(page.read_text()):
            text = re.sub(r"\\\n\s*", " ", block)
            for line in text.splitlines():
                line = line.split(" #")[0].strip()
                for part in line.split(";"):
                    part = part.strip()
                    if part.startswith("ai4hi "):
                        found.append((page.relative_to(REPO).as_posix(), shlex.split(part)))
    return found


COMMANDS = _commands()


def _known_commands() -> dict[str, set[str]]:
    from ai4hi_sdk.cli.main import build_parser

    parser = build_parser()
    groups = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    known = {}
    for name, sub in groups.choices.items():
        commands = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
        known[name] = set(commands[0].choices) if commands else set()
    return known


@pytest.mark.parametrize("page,argv", COMMANDS, ids=[" ".join(a[:3]) for _, a in COMMANDS])
def test_every_shown_command_exists(page, argv):
    known = _known_commands()
    assert argv[1] in known, f"{page}: no command group 'ai4hi {argv[1]}'"
    if known[argv[1]]:
        assert argv[2] in known[argv[1]], f"{page}: no command 'ai4hi {argv[1]} {argv[2]}'"


#: commands that run in seconds without a consortium; they must run as written
QUICK = {("privacy", "epsilon"), ("privacy", "plan")}


@pytest.mark.parametrize("page,argv", [(p, a) for p, a in COMMANDS if tuple(a[1:3]) in QUICK],
                         ids=[" ".join(a[1:3]) for p, a in COMMANDS if tuple(a[1:3]) in QUICK])
def test_quick_commands_run_as_written(page, argv, capsys):
    from ai4hi_sdk.cli.main import main

    assert main(argv[1:]) == 0, f"{page}: {' '.join(argv)}"


def test_the_docs_show_commands():
    assert len(COMMANDS) > 20 and any(tuple(a[1:3]) in QUICK for _, a in COMMANDS)


#: a repository path quoted in a page (`tests/x.py`, `tests/x.py::test_y`, `jobs/x.yaml`, ...)
REPO_PATH = re.compile(r"`((?:tests|ai4hi_sdk|jobs|benchmarks|site_templates|docs)/[A-Za-z0-9_./-]*[A-Za-z0-9_/])"
                       r"(?:::([A-Za-z_][A-Za-z0-9_]*))?`")


def _quoted_paths() -> list[tuple[str, str, str | None]]:
    found = set()
    for page in [*PAGES, REPO / "benchmarks" / "README.md"]:
        for path, test in REPO_PATH.findall(page.read_text()):
            found.add((page.relative_to(REPO).as_posix(), path, test or None))
    return sorted(found, key=lambda t: (t[0], t[1], t[2] or ""))


@pytest.mark.parametrize("page,path,test", _quoted_paths())
def test_every_quoted_repository_path_exists(page, path, test):
    # placeholders such as `docs/<page>.md` are not quoted with this pattern (angle brackets stop it)
    target = REPO / path
    assert target.exists(), f"{page} quotes {path}, which does not exist"
    if test is not None:
        assert re.search(rf"^(?:async )?def {test}\(", target.read_text(), re.M), \
            f"{page} quotes {path}::{test}, which is not a test there"


def test_pages_quote_repository_paths():
    assert len(_quoted_paths()) > 20  # the pattern still finds what the pages quote
