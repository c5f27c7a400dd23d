"""``medssm predict`` on an "events" checkpoint: the per-stay CSV equals the model's own probabilities on the
dataset's tokens (challenge files and their FHIR export alike), single files work, bad inputs are refused."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medssm.cli import main
from medssm.data.ehr import PhysioNet2012
from medssm.data.ehr.synthetic import write_synthetic_challenge
from medssm.engine.checkpoint import load_model, read_meta
from medssm.engine.predict_events import read_stays

FAST = ["model.args.d_model=16", "model.args.depth=1", "data.args.max_length=48", "train.max_steps=2",
        "train.batch_size=8", "train.val_every=2", "train.checkpoint_every=2", "train.warmup_steps=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("p12-predict")
    root = write_synthetic_challenge(base / "data", stays=20, events=30)
    run = base / "run"
    assert main(["train", "--config", "physionet2012", "--out", str(run), "--no-progress", "--device", "cpu",
                 f"data.args.root={root}", *FAST]) == 0
    return root, run


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _predict(run: Path, input: Path, output: Path) -> int:
    return main(["predict", "--checkpoint", str(run), "--input", str(input), "--output", str(output)])


def _expected(root: Path, run: Path) -> tuple[list[str], np.ndarray]:
    model, _ = load_model(run / "checkpoints" / "best", torch.device("cpu"))
    tokenizer = read_meta(run / "checkpoints" / "best")["data"]["tokenizer"]
    test = PhysioNet2012(root, "test", max_length=48, tokenizer=tokenizer)
    with torch.no_grad():
        prob = torch.softmax(model.eval()(torch.stack([test[i]["image"] for i in range(len(test))])), 1)
    return test.cases, prob.numpy()


def test_predict_a_challenge_folder_and_its_fhir_export(trained, tmp_path):
    root, run = trained
    cases, expected = _expected(root, run)
    assert _predict(run, root / "set-b", tmp_path / "p") == 0
    rows = _rows(tmp_path / "p" / "predictions.csv")
    assert [r["case"] for r in rows] == cases
    np.testing.assert_allclose([[float(r["prob_0"]), float(r["prob_1"])] for r in rows], expected, rtol=1e-5)
    assert [int(r["predicted"]) for r in rows] == expected.argmax(1).tolist()
    fhir = tmp_path / "fhir"
    assert main(["fhir", "export", "--source", str(root), "--out", str(fhir)]) == 0
    assert _predict(run, fhir / "set-b", tmp_path / "f.csv") == 0
    assert _rows(tmp_path / "f.csv") == rows
    one = sorted((fhir / "set-b").glob("*.json"))[0]
    assert _predict(run, one, tmp_path / "one.csv") == 0
    assert _rows(tmp_path / "one.csv") == [r for r in rows if r["case"] == one.stem]
    # an existing output is refused unless --overwrite
    assert _predict(run, one, tmp_path / "one.csv") != 0


def test_bad_inputs_are_refused_with_the_file_named(trained, tmp_path):
    root, _ = trained
    with pytest.raises(ValueError, match="no stays to predict"):
        read_stays(tmp_path)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    first = sorted((root / "set-b").glob("*.txt"))[0]
    shutil.copy(first, mixed / first.name)
    (mixed / "x.json").write_text('{"resourceType": "Bundle", "entry": []}')
    with pytest.raises(ValueError, match="both challenge .txt stays and FHIR"):
        read_stays(mixed)
    backwards = tmp_path / "backwards"
    backwards.mkdir()
    lines = first.read_text().splitlines()
    (backwards / first.name).write_text("\n".join(lines + ["00:00,HR,80"]) + "\n")
    with pytest.raises(ValueError, match=f"{first.name}: times go backwards"):
        read_stays(backwards)
    with pytest.raises(ValueError, match="not a challenge stay"):
        read_stays(_touch(tmp_path / "a.png"))
    assert [s.record_id for s in read_stays(first)] == [first.stem]


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path
