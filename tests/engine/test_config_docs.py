"""docs/configs.md's generator (issue 26, item 14): docstring entries parsed, every schema key documented,
data sets picked up from DATASETS (tests/test_docs.py checks the committed file against its output)."""

from __future__ import annotations

import dataclasses

import pytest

from medssm.engine import config_docs
from medssm.engine.config import Config, TrainConfig
from medssm.engine.config_docs import dataset_rows, doc_entries, markdown, plain, schema_rows


def test_doc_entries_reads_one_entry_per_name_shared_and_inline_entries():
    doc = """Summary.

    Args:
        path: the file. split: "train" or "test".
        a, b: both
            on two lines.
        c (int): typed. Not an entry: d: because d is not a name.

    Returns:
        nothing: not an argument.
    """
    entries = doc_entries(doc, "Args", ["path", "split", "a", "b", "c", "nothing"])
    assert entries["path"] == "the file." and entries["split"] == '"train" or "test".'
    assert entries["a"] == entries["b"] == "both on two lines." and "nothing" not in entries
    assert entries["c"] == "typed. Not an entry: d: because d is not a name."
    assert doc_entries("No sections here.", "Args", ["x"]) == {}


def test_every_schema_key_has_a_type_default_and_meaning():
    sections = schema_rows()
    assert list(sections) == [f.name for f in dataclasses.fields(Config)]
    train = {row[0]: row for row in sections["train"]}
    assert train["class_weights"][1:3] == ("str | list[float] | None", "null")
    assert train["batch_size"][2] == "8" and "global batch" in train["batch_size"][3]
    assert all(row[3] for rows in sections.values() for row in rows)
    assert plain().splitlines()[0].startswith("model.name")


def test_a_key_without_a_meaning_is_named(monkeypatch):
    monkeypatch.setattr(TrainConfig, "__doc__", TrainConfig.__doc__.replace("        sampler:", "        smplr:"))
    with pytest.raises(ValueError, match=r"without a meaning .*\['train.sampler'\]"):
        schema_rows()


def test_a_data_set_added_to_datasets_appears_with_its_arguments(monkeypatch):
    from medssm.data import build

    class Bags:
        """Feature bags.

        Args:
            root: the folder of bags.
            split: which split. max_instances: instances kept per bag (``root`` order).
            transform: applied to items.
        """

        def __init__(self, root: str, split: str = "train", max_instances: int = 512, seed: int = 0,
                     transform=None) -> None:
            pass

    assert dataset_rows(Bags) == [("root", "str", "required", "the folder of bags."),
                                  ("max_instances", "int", "512", "instances kept per bag (``root`` order)."),
                                  ("seed", "int", "0", "(see Bags's docstring)")]
    monkeypatch.setitem(build.DATASETS, "bags", Bags)
    text = markdown()
    assert "### `bags`: Bags" in text and "| `max_instances` | `int` | `512` |" in text
    assert "| `mask_threshold` | `float \\| None` | `null` | binarise masks" in text
    assert config_docs.HARNESS_ARGS == ("self", "split", "transform") and "| `transform` |" not in text
