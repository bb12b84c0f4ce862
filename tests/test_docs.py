"""The README and docs/ against the code: a guide a newcomer reads once, and reference pages that stay true.

Checked here, in `make test`: the README's length and where its first run is; that docs/flags.md and `--help`
list the same flags in the same groups; that every shell command in the README and docs/ parses with the
flags it uses (the command's, the mock's, a make target, a script that exists); that every Python snippet
compiles and imports only what exists; that every relative link and anchor resolves. The Python snippets
that are whole programs run against the mock in `test_command.py` (end-to-end).
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

from rate_limited_processor.cli import build_parser
from rate_limited_processor.mock_server.__main__ import build_parser as build_mock_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCUMENTS = [README, *PAGES, ROOT / "benchmarks" / "README.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)


def blocks(path: Path, *languages: str) -> list[str]:
    return [body for language, body in FENCE.findall(path.read_text(encoding="utf-8")) if language in languages]


def test_the_readme_is_a_guide_read_once() -> None:
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 400
    first_hundred = "\n".join(lines[:100])
    # Set-up and a first run against the project's mock API come first.
    assert "make demo" in first_hundred and "make test" in first_hundred
    assert "python -m rate_limited_processor.mock_server" in first_hundred
    assert re.search(r"--request_url http://127\.0\.0\.1:8000/v1/chat/completions", first_hundred)
    for page in PAGES:  # every reference page is linked from the guide
        assert f"docs/{page.name}" in text, page.name


def test_ci_runs_the_readmes_test_command() -> None:
    sh = "\n".join(blocks(README, "sh"))
    assert re.search(r"^make test\b", sh, flags=re.MULTILINE)
    assert "make test\n" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def _group_flags() -> dict[str, set[str]]:
    groups = {}
    for group in build_parser()._action_groups[2:]:  # not argparse's own positionals and "options" (--help)
        groups[group.title or ""] = {option for action in group._group_actions for option in action.option_strings if option.startswith("--")}
    return groups


def test_docs_flags_lists_every_flag_of_help_in_its_group() -> None:
    page = (ROOT / "docs" / "flags.md").read_text(encoding="utf-8")
    documented: dict[str, set[str]] = {}
    for section in re.split(r"^## ", page, flags=re.MULTILINE)[1:]:
        title, _, body = section.partition("\n")
        flags = set(re.findall(r"^\| `(--[a-z_]+)` \|", body, flags=re.MULTILINE))
        if flags:
            documented[title.strip()] = flags
    assert documented == _group_flags()


def shell_commands(text: str) -> list[list[str]]:
    """The commands of a shell block (continuation lines joined, comments and a `$ ` prompt dropped)."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip().removeprefix("$ ")
        if not line or line.startswith("#"):
            continue
        commands.append(shlex.split(line, comments=True))
    return commands


def check_command(words: list[str]) -> None:
    """Raises if a documented command would fail on a flag or a name (not on what it needs at run time)."""
    if words[:1] == [".venv/bin/python"] or words[:1] == ["python"] and words[1:2] != ["-m"]:
        script = words[1]
        assert (ROOT / script).exists(), script
        return
    if words[:3] == ["python", "-m", "rate_limited_processor.mock_server"]:
        build_mock_parser().parse_args(words[3:])
    elif words[:3] == ["python", "-m", "rate_limited_processor"] or words[:1] == ["rate-limited-processor"]:
        arguments = words[3:] if words[0] == "python" else words[1:]
        build_parser().parse_args(arguments)
    elif words[0] == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(encoding="utf-8"), flags=re.MULTILINE)
        assert all(target in targets for target in words[1:]), words
    else:
        assert words[0] in {"pip", "redis-server", "curl", "jq", "export", "docker"}, f"a command this test does not know: {words}"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: path.name)
def test_every_shell_snippet_uses_flags_that_exist(path: Path) -> None:
    texts = blocks(path, "sh", "shell", "bash")
    for body in blocks(path, "text"):  # a command shown with its output: the lines after a `$ ` prompt
        texts += [line for line in body.splitlines() if line.startswith("$ ")]
    for text in texts:
        for words in shell_commands(text):
            try:
                check_command(words)
            except SystemExit:  # argparse refused it
                pytest.fail(f"{path.name}: {shlex.join(words)}")


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: path.name)
def test_every_python_snippet_compiles_and_imports_what_exists(path: Path) -> None:
    for snippet in blocks(path, "python"):
        tree = ast.parse(snippet)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rate_limited_processor"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{path.name}: {node.module} has no {alias.name}"


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.lower().replace("`", "")).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: path.name)
def test_every_relative_link_and_anchor_resolves(path: Path) -> None:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{path.name}: {target}"
        if anchor:
            assert linked.suffix == ".md" and anchor in _anchors(linked), f"{path.name}: {target}"


def test_the_readmes_everyday_flags_are_real_flags_with_the_defaults_of_help() -> None:
    rows = re.findall(r"^\| `(--[a-z_]+)` \| ([^|]+) \|", README.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert len(rows) >= 10
    actions = {option: action for action in build_parser()._actions for option in action.option_strings}
    for flag, default in rows:
        action = actions[flag]
        if isinstance(action.default, (int, float)) and not isinstance(action.default, bool):
            assert f"{action.default:g}" in default.replace(",", ""), flag
        if action.default is False:
            assert default.strip() == "off", flag
