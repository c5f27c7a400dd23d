"""The README and docs/ stay true to the code: every `medssm ...` command they show parses, every relative link
resolves, the README's python snippets run, and its model table is what `medssm models --markdown` prints.

Commands are parsed, never run. The checkers below are also run on a deliberately broken file, so that they
cannot pass by finding nothing.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from medssm.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MARKDOWN = [README, *DOCS]

SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
MODELS_START, MODELS_END = "<!-- models:start -->", "<!-- models:end -->"


def code_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """The fenced code blocks of a markdown text: (language, line number of the first code line, lines)."""
    blocks, current, fence = [], None, ""
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if current is None and match:
            fence, current = match.group(1), (match.group(2).lower(), number + 1, [])
        elif current is not None and line.strip().startswith(fence) and not line.strip().strip(fence[0]):
            blocks.append(current)
            current = None
        elif current is not None:
            current[2].append(line)
    return blocks


def shell_commands(text: str) -> list[tuple[int, str]]:
    """(line number, command line) for each command in the shell code blocks, continuation lines joined and
    a leading `$ ` prompt removed."""
    commands = []
    for language, first, lines in code_blocks(text):
        if language not in SHELL_LANGUAGES:
            continue
        pending, start = "", first
        for offset, line in enumerate(lines):
            if not pending:
                start = first + offset
            stripped = line.strip()
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            command = (pending + stripped).strip()
            pending = ""
            command = command[2:] if command.startswith("$ ") else command
            if command:
                commands.append((start, command))
    return commands


def medssm_argv(command: str) -> list[list[str]]:
    """The argument lists given to `medssm` in one shell command line: `medssm ...`, `python3 -m medssm ...`
    or `torchrun ... -m medssm ...`, after environment assignments such as `PYTHONPATH=src`; comments and
    the other commands of a `&&`, `;` or `|` chain are left out."""
    tokens = shlex.split(command, comments=True)
    pieces, piece = [], []
    for token in tokens:
        if token in ("&&", "||", "|", ";"):
            pieces.append(piece)
            piece = []
        else:
            piece.append(token)
    pieces.append(piece)
    found = []
    for piece in pieces:
        while piece and (piece[0] == "env" or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", piece[0])):
            piece = piece[1:]
        module = [i for i in range(len(piece) - 1) if piece[i:i + 2] == ["-m", "medssm"]]
        if piece and piece[0] == "medssm":
            found.append(piece[1:])
        elif module:
            found.append(piece[module[0] + 2:])
    return found


def command_problems(path: Path) -> tuple[list[str], int]:
    """('file:line: command: error' for each `medssm` command in path that argparse rejects, commands seen)."""
    problems, seen = [], 0
    for line, command in shell_commands(path.read_text()):
        try:
            argvs = medssm_argv(command)
        except ValueError as error:  # shlex: unbalanced quotes
            problems.append(f"{path.name}:{line}: {command}: {error}")
            continue
        for argv in argvs:
            seen += 1
            stderr = io.StringIO()
            try:
                with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                    build_parser().parse_args(argv)
            except SystemExit:
                message = stderr.getvalue().strip().splitlines()
                problems.append(f"{path.name}:{line}: {command}: {message[-1] if message else 'argparse exited'}")
    return problems, seen


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of a markdown text (lower case, punctuation dropped, spaces to
    hyphens, repeats numbered -1, -2, ...), headings inside code blocks excluded."""
    in_code = {first + i for _, first, lines in code_blocks(text) for i in range(-1, len(lines) + 1)}
    anchors: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match or number in in_code:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))  # a link's text
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        anchor, repeat = slug, 0
        while anchor in anchors:
            repeat += 1
            anchor = f"{slug}-{repeat}"
        anchors.add(anchor)
    return anchors


def link_problems(path: Path, root: Path = ROOT) -> tuple[list[str], int]:
    """('file:line: target: why' for each relative link in path that does not resolve to a file inside root
    (and, for `#anchor` links into markdown, to one of its headings), relative links seen)."""
    text = path.read_text()
    in_code = {first + i for _, first, lines in code_blocks(text) for i in range(-1, len(lines) + 1)}
    problems, seen = [], 0
    for number, line in enumerate(text.splitlines(), start=1):
        if number in in_code:
            continue
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        targets = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", line)
        targets += re.findall(r"^\s*\[[^\]]+\]:\s*(\S+)", line)  # reference definitions
        for target in targets:
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:, ...
                continue
            seen += 1
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path.resolve()
            if not resolved.is_relative_to(root.resolve()):
                problems.append(f"{path.name}:{number}: {target}: outside the repository")
            elif not resolved.exists():
                problems.append(f"{path.name}:{number}: {target}: no such file")
            elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved.read_text()):
                problems.append(f"{path.name}:{number}: {target}: no heading with that anchor in {resolved.name}")
    return problems, seen


def test_the_docs_exist():
    assert {p.name for p in DOCS} >= {"architecture.md", "benchmarks.md", "cpu-tuning.md", "results.md"}


@pytest.mark.parametrize("check,least,what", [
    (command_problems, 10, "medssm commands in code blocks that `medssm` would reject"),
    (link_problems, 5, "relative links that do not resolve"),
], ids=["commands parse", "links resolve"])
def test_every_command_parses_and_every_link_resolves(check, least, what):
    results = [check(path) for path in MARKDOWN]
    problems = [problem for found, _ in results for problem in found]
    seen = sum(count for _, count in results)
    assert seen >= least, f"only {seen} checked for {what!r} in README.md and docs/: is the extraction broken?"
    assert not problems, f"{what}:\n" + "\n".join(problems)


def test_the_checkers_catch_a_bad_command_and_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## A section\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text("\n".join([
        "# Page", "", "```bash",
        "PYTHONPATH=src medssm models --markdown   # fine",
        "$ medssm train --config demo \\", "    --out runs/x --no-such-flag",
        "torchrun --nproc_per_node=2 -m medssm bench scan --shape 1,2,3",
        "pip install medssm && medssm frobnicate",
        "```", "",
        "[ok](other.md#a-section) [ok too](#page) [site](https://example.org/x.md)",
        "[gone](missing.md) [bad anchor](other.md#no-such-section) [out](../../elsewhere.md)",
        "`[not a link](missing.md)`", "",
    ]))
    problems, seen = command_problems(page)
    assert seen == 4
    assert [p.split(": ")[0] for p in problems] == ["page.md:5", "page.md:7", "page.md:8"], problems
    assert "--no-such-flag" in problems[0] and "1,2,3" in problems[1] and "frobnicate" in problems[2]
    problems, seen = link_problems(page, root=tmp_path)
    assert seen == 5
    assert [p.split(": ")[1] for p in problems] == ["missing.md", "other.md#no-such-section", "../../elsewhere.md"]


def test_readme_set_up_commands_are_what_ci_runs():
    """.ci/run runs exactly the README's two set-up commands: its first code block."""
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("python3 -m")]
    assert ci == code_blocks(README.read_text())[0][2]


def test_readme_python_snippets_run():
    snippets = [(first, "\n".join(lines)) for language, first, lines in code_blocks(README.read_text())
                if language == "python"]
    assert len(snippets) >= 2
    for first, code in snippets:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, f"README.md:{first}", "exec"), {"__name__": "readme_snippet"})


def test_readme_model_table_is_the_registry(capsys):
    """Builds every registered model once to count its FLOPs (3-6 s for the three mini models on 2 busy cores)."""
    text = README.read_text()
    assert MODELS_START in text and MODELS_END in text, f"README.md lacks the {MODELS_START} ... {MODELS_END} block"
    shown = text.split(MODELS_START)[1].split(MODELS_END)[0].strip()
    assert main(["models", "--markdown"]) == 0
    printed = capsys.readouterr().out.strip()
    assert shown == printed, (f"README.md's model table is not the registry's: run `medssm models --markdown` and "
                              f"paste its output between {MODELS_START} and {MODELS_END}")


def test_configs_md_is_the_config_schema(capsys):
    """docs/configs.md is what `medssm configs --markdown` prints (issue 26, item 14)."""
    assert main(["configs", "--markdown"]) == 0
    printed = capsys.readouterr().out
    assert (ROOT / "docs" / "configs.md").read_text() == printed, (
        "docs/configs.md is not the config schema's: run `medssm configs --markdown > docs/configs.md`")


@pytest.mark.parametrize("command,argvs", [
    ("PYTHONPATH=src medssm info  # versions", [["info"]]),
    ("torchrun --nproc_per_node=2 -m medssm train --out r", [["train", "--out", "r"]]),
    ("python3 -m medssm -v info && medssm models", [["-v", "info"], ["models"]]),
    ("python3 -m pytest -q", []),
])
def test_medssm_argv_finds_the_commands(command, argvs):
    assert medssm_argv(command) == argvs
