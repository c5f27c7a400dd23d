"""docs/configs.md, generated from the config schema: ``medssm configs --markdown > docs/configs.md``.

Every key of every section (engine/config.py's dataclasses) with its type, default and the one-line meaning
from its class docstring's ``Attributes:`` entry; then each data set of ``medssm.data.DATASETS`` with the
arguments of its ``__init__`` and the meanings from its docstring's ``Args:`` entries (a data set added to
DATASETS appears here with no other change). Model arguments are each family's: ``medssm models`` lists the
models and their docstrings list the arguments. tests/test_docs.py keeps the committed file equal to this
output, and a schema key without a meaning fails :func:`schema_rows`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any

from .config import Config

# Arguments of a data set's __init__ that the harness sets itself (data.*_split, the transform presets).
HARNESS_ARGS = ("self", "split", "transform")


def doc_entries(doc: str | None, header: str, names: list[str]) -> dict[str, str]:
    """``{name: meaning}`` from a Google-style ``header:`` section (``Args:``, ``Attributes:``) of ``doc``.

    An entry starts with ``name:``, ``name (type):`` or ``a, b:`` (names of ``names`` only) at the start of a
    line or after a sentence's full stop, and runs to the next entry; its text is joined into one line."""
    doc = inspect.cleandoc(doc or "")
    match = re.search(rf"^(\s*){header}:\s*$", doc, re.MULTILINE)
    if not match:
        return {}
    lines = []
    for line in doc[match.end():].splitlines()[1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= len(match.group(1)):
            break  # the section ends where the text comes back to the header's indentation
        lines.append(line.strip())
    text = " ".join(lines)
    name = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    starts = list(re.finditer(rf"(?:^|(?<=\. )|(?<=\.\) ))((?:{name})(?:, (?:{name}))*)(?: \([^)]*\))?: ", text))
    entries = {}
    for i, start in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        meaning = text[start.end():end].strip()
        for key in start.group(1).split(", "):
            entries.setdefault(key, meaning)
    return entries


def _type_text(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return text.replace("typing.", "")


def _default_text(value: Any) -> str:
    if value is inspect.Parameter.empty or value is dataclasses.MISSING:
        return "required"
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value).replace("'", "")


def schema_rows() -> dict[str, list[tuple[str, str, str, str]]]:
    """``{section: [(key, type, default, meaning), ...]}`` for every section of :class:`Config`;
    ValueError naming the keys whose class docstring has no ``Attributes:`` entry."""
    sections, missing = {}, []
    for section in dataclasses.fields(Config):
        cls = section.default_factory
        fields = dataclasses.fields(cls)
        meanings = doc_entries(cls.__doc__, "Attributes", [f.name for f in fields])
        rows = []
        for f in fields:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if f.name not in meanings:
                missing.append(f"{section.name}.{f.name}")
            rows.append((f.name, _type_text(f.type), _default_text(default), meanings.get(f.name, "")))
        sections[section.name] = rows
    if missing:
        raise ValueError(f"config keys without a meaning in their class docstring's Attributes: {missing}")
    return sections


def dataset_rows(cls: type) -> list[tuple[str, str, str, str]]:
    """``[(argument, type, default, meaning), ...]`` of a data set class (its ``__init__`` and docstring)."""
    every = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    meanings = doc_entries(cls.__doc__, "Args", [p.name for p in every])  # split/transform end the entries before
    meanings.update(doc_entries(cls.__init__.__doc__, "Args", [p.name for p in every]))
    parameters = [p for p in every if p.name not in HARNESS_ARGS]
    return [(p.name, _type_text(p.annotation) if p.annotation is not inspect.Parameter.empty else "-",
             _default_text(p.default), meanings.get(p.name) or _mentioned(p.name, meanings, cls))
            for p in parameters]


def _mentioned(name: str, meanings: dict[str, str], cls: type) -> str:
    """The meaning of an argument without an entry of its own: the entry that names it (``name``)."""
    for other, text in meanings.items():
        if f"``{name}``" in text:
            return f"see `{other}`: {text}"
    return f"(see {cls.__name__}'s docstring)"


def _table(rows: list[tuple[str, str, str, str]], first: str) -> list[str]:
    lines = [f"| {first} | type | default | meaning |", "|---|---|---|---|"]
    for row in rows:
        cells = [f"`{row[0]}`", f"`{row[1]}`", f"`{row[2]}`", row[3]]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return lines


def markdown() -> str:
    """The whole of docs/configs.md."""
    from ..data.build import DATASETS

    lines = ["# Config reference", "",
             "Generated from the config schema (`src/medssm/engine/config.py`) and the data sets' docstrings by "
             "`medssm configs --markdown > docs/configs.md`; do not edit by hand (tests/test_docs.py checks it).",
             "", "A config is YAML with up to five sections; every key may be overridden on the command line as "
             "`section.key=value` (the value parsed as YAML), e.g. `medssm train --config demo train.lr=3e-4 "
             "data.args.root=/data/x`. Unknown sections and keys are errors.", ""]
    for section, rows in schema_rows().items():
        doc = inspect.getdoc(next(f.default_factory for f in dataclasses.fields(Config) if f.name == section))
        lines += [f"## {section}", "", doc.splitlines()[0], "", *_table(rows, "key"), ""]
    lines += ["## Model arguments", "",
              "`model.args` are the constructor arguments of the model `model.name` names: `medssm models` lists "
              "the registered models (with `--task`), and each family's docstring (`help(medssm.models.NAME)`, "
              "or the family's module under `src/medssm/models/`) lists its arguments. `spatial_dims`, "
              "`in_channels` and `out_channels` default to the data set's.", "",
              "## Data set arguments", "",
              "`data.args` are the keyword arguments of the data set `data.name` names (the harness passes "
              "`split` from `data.train_split`/`val_split`/`test_split`, and the transforms).", ""]
    for name, cls in DATASETS.items():
        summary = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
        lines += [f"### `{name}`: {cls.__name__}", "", summary, "", *_table(dataset_rows(cls), "argument"), ""]
    return "\n".join(lines).rstrip() + "\n"


def plain() -> str:
    """Every config key as ``section.key  type  default  meaning`` lines (``medssm configs``)."""
    rows = [(f"{section}.{key}", kind, default, meaning) for section, entries in schema_rows().items()
            for key, kind, default, meaning in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows) + "\n"
