"""FHIR R4: PhysioNet stays written as Bundles or NDJSON and read back give the same tokens (generated stays
always, real ones when present); bad records are dropped and counted by the stated rules."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medssm.cli import main
from medssm.data.ehr import EventTokenizer, PhysioNet2012, read_fhir_resources, read_stay_csv, stay_to_bundle
from medssm.data.ehr.fhir import load_mapping, read_fhir_folder, stay_resources
from medssm.data.ehr.synthetic import write_synthetic_challenge

REAL = Path("/work/shared/data/ehr/physionet2012")
LOINC = "http://loinc.org"


@pytest.fixture(scope="module")
def challenge(tmp_path_factory) -> Path:
    return write_synthetic_challenge(tmp_path_factory.mktemp("p12"), stays=16, events=40)


def _same_tokens(stays, back, tokenizer):
    by_id = {s.record_id: s for s in back}
    assert sorted(by_id) == sorted(s.record_id for s in stays)
    for stay in stays:
        other = by_id[stay.record_id]
        assert other.events() == stay.events()
        np.testing.assert_array_equal(tokenizer.encode(other, 128), tokenizer.encode(stay, 128))


def test_the_mapping_names_every_variable_with_a_unit():
    mapping = load_mapping()
    from medssm.data.ehr.records import SERIES_VARIABLES

    assert sorted(mapping["variables"]) == sorted(SERIES_VARIABLES)
    assert set(mapping["descriptors"]) == {"Age", "Height", "Weight", "ICUType"}
    local = {n for n, e in {**mapping["variables"], **mapping["descriptors"]}.items() if e["system"] != LOINC}
    assert local == {"MechVent", "ICUType"}
    assert mapping["variables"]["HR"]["code"] == "8867-4" and mapping["descriptors"]["Age"]["unit"] == "a"


@pytest.mark.parametrize("fmt", ["bundle", "ndjson"])
def test_export_and_read_back_give_the_same_tokens_and_labels(challenge, tmp_path, fmt):
    out = tmp_path / "fhir"
    assert main(["fhir", "export", "--source", str(challenge), "--out", str(out), "--format", fmt]) == 0
    assert (out / "Outcomes-a.txt").read_text() == (challenge / "Outcomes-a.txt").read_text()
    for split in ("train", "val", "test"):
        csv_set = PhysioNet2012(challenge, split, max_length=64)
        fhir_set = PhysioNet2012(out, split, format="fhir", max_length=64)
        assert fhir_set.cases == csv_set.cases and fhir_set.labels.tolist() == csv_set.labels.tolist()
        assert fhir_set.tokenizer.to_dict() == csv_set.tokenizer.to_dict()
        for i in range(len(csv_set)):
            assert np.array_equal(fhir_set[i]["image"].numpy(), csv_set[i]["image"].numpy())
    assert main(["fhir", "export", "--source", str(challenge), "--out", str(out)]) == 2  # exists: no --overwrite


@pytest.mark.skipif(not REAL.exists(), reason="PhysioNet 2012 files not present")
def test_real_stays_survive_the_round_trip():
    stays = [read_stay_csv(p) for p in sorted((REAL / "set-a").glob("*.txt"))[:12]]
    bundles = [stay_to_bundle(s) for s in stays]
    back = read_fhir_resources(e["resource"] for b in bundles for e in json.loads(json.dumps(b))["entry"])
    _same_tokens(stays, back, EventTokenizer.fit(stays, 10))


def _observation(code: str, value: float | None, unit: str, when: str, system: str = LOINC, **extra) -> dict:
    resource = {"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/p1"},
                "code": {"coding": [{"system": system, "code": code}]}, **extra}
    if when:
        resource["effectiveDateTime"] = when
    if value is not None:
        resource["valueQuantity"] = {"value": value, "code": unit}
    return resource


def test_bad_records_are_dropped_and_counted():
    resources = [
        {"resourceType": "Patient", "id": "p1", "gender": "male"},
        {"resourceType": "Patient", "id": "empty"},
        {"resourceType": "Encounter", "subject": {"reference": "Patient/p1"},
         "period": {"start": "2020-05-01T10:00:00Z"}},
        _observation("30525-0", 71, "a", "2020-05-01T10:00:00Z"),
        _observation("8867-4", 80, "/min", "2020-05-01T10:30:00+00:00"),
        _observation("8867-4", 81, "/min", "2020-05-01T09:00:00Z"),  # before admission
        _observation("8867-4", 82, "/h", "2020-05-01T11:00:00Z"),  # unit mismatch
        _observation("8310-5", 98.6, "[degF]", "2020-05-01T11:00:00Z"),  # unit mismatch, no conversion
        _observation("1234-5", 1, "1", "2020-05-01T11:00:00Z"),  # unknown code
        _observation("8867-4", None, "/min", "2020-05-01T11:00:00Z"),  # no value
        _observation("8867-4", 83, "/min", ""),  # no time
        _observation("8867-4", 84, "/min", "2020-05-01T12:00:00Z", status="entered-in-error"),
        _observation("8310-5", 2.5, "Cel", "2020-05-01T12:00:00Z"),  # out of range
        _observation("8867-4", 90, "/min", "2020-05-01T10:00:00Z", subject={"reference": "Patient/nobody"}),
    ]
    counts = Counter()
    stays = {s.record_id: s for s in read_fhir_resources(resources, counts)}
    assert stays["p1"].events() == [(30, "HR", 80.0)] and stays["p1"].statics["Age"] == 71
    assert stays["p1"].statics["Gender"] == 1 and stays["empty"].is_empty()
    assert counts == Counter({"before_admission": 1, "unit_mismatch": 2, "unknown_variable": 1, "missing": 1,
                              "no_time": 1, "entered_in_error": 1, "out_of_range:Temp": 1, "no_patient": 1})


def test_empty_stays_are_dropped_by_the_dataset_and_errors_name_the_file(challenge, tmp_path):
    out = tmp_path / "fhir"
    main(["fhir", "export", "--source", str(challenge), "--out", str(out), "--set", "set-b"])
    (out / "set-b" / "999.json").write_text(json.dumps({"resourceType": "Bundle", "entry": [
        {"resource": {"resourceType": "Patient", "id": "999"}}]}))
    test = PhysioNet2012(out, "test", format="fhir", max_length=32, train_set="set-b")
    assert test.counts["empty_stay"] == 1 and "999" not in test.cases and len(test) == 16
    (out / "set-b" / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not JSON"):
        read_fhir_folder(out / "set-b")
    with pytest.raises(FileNotFoundError, match="no \\*.json or \\*.ndjson"):
        read_fhir_folder(tmp_path)


def test_the_admission_defaults_to_the_first_observation_without_an_encounter(challenge):
    stay = read_stay_csv(sorted((challenge / "set-a").glob("*.txt"))[0])
    resources = [r for r in stay_resources(stay, load_mapping()) if r["resourceType"] != "Encounter"]
    (back,) = read_fhir_resources(resources)
    assert back.events() == stay.events()  # the descriptors sit at the admission instant
