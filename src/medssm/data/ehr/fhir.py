"""ICU stays in HL7 FHIR R4: read Patient, Encounter and Observation resources (JSON Bundles or NDJSON bulk
exports) into :class:`~.records.Stay`, and write PhysioNet 2012 stays as Bundles or NDJSON, so the FHIR
path can be checked end to end on real values (``medssm fhir export``).

Mapping (``physionet2012_loinc.json`` next to this file, or your own file of the same form): each variable
and descriptor has a code (LOINC where one fits, the local system ``urn:medssm:physionet2012`` for
MechVent and ICUType) and the UCUM unit of its values. Reading rules, per resource:

- Patient: the stay's RecordID is its identifier of system ``record_id_system``, else its ``id``; Gender is
  ``gender`` (female 0, male 1, anything else missing).
- Admission time: the Encounter's ``period.start`` (an Encounter whose ``subject`` is the patient); without
  an Encounter, the earliest ``effectiveDateTime`` among the patient's Observations. Event times are whole
  minutes since admission (rounded down).
- Observation -> variable by the first ``code.coding`` whose (system, code) the mapping names; a descriptor
  when it carries the descriptor category or its code is only a descriptor's (Age, Height, ICUType), the
  first by time kept. Dropped and counted: ``unknown_variable`` (no mapped coding), ``unit_mismatch``
  (``valueQuantity.code``, else ``.unit``, differs from the mapping's: no unit conversion is attempted),
  ``missing`` (no ``valueQuantity.value``), ``no_time`` (no ``effectiveDateTime``), ``entered_in_error``
  (status entered-in-error or cancelled), ``no_patient`` (subject names no Patient in the input), then the
  rules of :mod:`.records` (-1, ranges, ``before_admission``), so a stay read from FHIR and from the
  challenge's CSV file give the same events and tokens.

Writing (:func:`stay_to_bundle`): a Bundle of type "collection" with the Patient (id = RecordID), one
Encounter (period.start = :data:`ADMISSION`, a fixed instant: the challenge holds only times since
admission) and one Observation per descriptor and event (value written as the exact float), the
descriptors with the descriptor category. Values that the cleaning rules drop are not written.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .records import STATIC_VARIABLES, Stay, clean_events, clean_statics, count_summary

logger = logging.getLogger(__name__)

MAPPING_FILE = Path(__file__).with_name("physionet2012_loinc.json")
ADMISSION = datetime(2012, 1, 1, tzinfo=timezone.utc)
GENDERS = {"female": 0.0, "male": 1.0}
_DROPPED_STATUS = ("entered-in-error", "cancelled")


def load_mapping(path: str | Path | None = None) -> dict[str, Any]:
    """The variable <-> code mapping (default: the PhysioNet 2012 LOINC file shipped with medssm)."""
    path = Path(path) if path is not None else MAPPING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"FHIR mapping file not found: {path}")
    mapping = json.loads(path.read_text())
    for key in ("local_system", "descriptor_category", "record_id_system", "variables", "descriptors"):
        if key not in mapping:
            raise ValueError(f"{path}: the mapping lacks the key {key!r}")
    return mapping


def _iso(minutes: int) -> str:
    return (ADMISSION + timedelta(minutes=int(minutes))).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str, where: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        raise ValueError(f"{where}: not an ISO 8601 dateTime: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)  # naive times read as UTC


def _observation(stay: Stay, number: int, entry: dict[str, str], minutes: int, value: float,
                 category: dict[str, str] | None = None) -> dict[str, Any]:
    resource = {"resourceType": "Observation", "id": f"{stay.record_id}-{number}", "status": "final",
                "code": {"coding": [{"system": entry["system"], "code": entry["code"], "display": entry["display"]}]},
                "subject": {"reference": f"Patient/{stay.record_id}"}, "effectiveDateTime": _iso(minutes),
                "valueQuantity": {"value": value, "unit": entry["unit"], "system": "http://unitsofmeasure.org",
                                  "code": entry["unit"]}}
    if category:
        resource["category"] = [{"coding": [category]}]
    return resource


def stay_resources(stay: Stay, mapping: dict[str, Any]) -> list[dict[str, Any]]:
    """The Patient, Encounter and Observations of one stay (module docstring)."""
    gender = {0.0: "female", 1.0: "male"}.get(stay.statics.get("Gender"), "unknown")
    patient = {"resourceType": "Patient", "id": stay.record_id, "gender": gender,
               "identifier": [{"system": mapping["record_id_system"], "value": stay.record_id}]}
    encounter = {"resourceType": "Encounter", "id": f"enc-{stay.record_id}", "status": "finished",
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "ACUTE"},
                 "subject": {"reference": f"Patient/{stay.record_id}"}, "period": {"start": _iso(0)}}
    category = {"system": mapping["local_system"], "code": mapping["descriptor_category"]}
    resources: list[dict[str, Any]] = [patient, encounter]
    for name, value in stay.statics.items():
        if name in mapping["descriptors"] and value == value:  # NaN (missing) is not written
            resources.append(_observation(stay, len(resources), mapping["descriptors"][name], 0, value, category))
    for minutes, name, value in stay.events():
        resources.append(_observation(stay, len(resources), mapping["variables"][name], minutes, value))
    return resources


def stay_to_bundle(stay: Stay, mapping: dict[str, Any] | None = None) -> dict[str, Any]:
    """One stay as a FHIR R4 Bundle (type "collection")."""
    mapping = mapping or load_mapping()
    entries = [{"fullUrl": f"urn:medssm:{r['resourceType']}/{r['id']}", "resource": r}
               for r in stay_resources(stay, mapping)]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def write_fhir_export(source: str | Path, out: str | Path, sets: list[str] | None = None, fmt: str = "bundle",
                      mapping: dict[str, Any] | None = None) -> dict[str, int]:
    """Write the stays of each PhysioNet 2012 set folder of ``source`` (default: every ``set-*``) under ``out``
    in the same layout: ``set-a/<RecordID>.json`` Bundles (``fmt="bundle"``) or ``set-a/{Patient,Encounter,
    Observation}.ndjson`` (``fmt="ndjson"``), and copy the outcome files. Returns stays written per set."""
    from .physionet2012 import read_stay_csv

    source, out, mapping = Path(source), Path(out), mapping or load_mapping()
    if fmt not in ("bundle", "ndjson"):
        raise ValueError(f"fmt must be 'bundle' or 'ndjson', got {fmt!r}")
    sets = sets or sorted(p.name for p in source.glob("set-*") if p.is_dir())
    if not sets:
        raise FileNotFoundError(f"{source}: no set-* folders to export")
    written = {}
    for name in sets:
        folder = source / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such set folder")
        target = out / name
        target.mkdir(parents=True, exist_ok=True)
        counts: Counter = Counter()
        stays = [s for s in (read_stay_csv(p, counts) for p in sorted(folder.glob("*.txt"))) if s is not None]
        if fmt == "bundle":
            for stay in stays:
                (target / f"{stay.record_id}.json").write_text(json.dumps(stay_to_bundle(stay, mapping)))
        else:
            files = {kind: open(target / f"{kind}.ndjson", "w") for kind in ("Patient", "Encounter", "Observation")}
            try:
                for stay in stays:
                    for resource in stay_resources(stay, mapping):
                        files[resource["resourceType"]].write(json.dumps(resource) + "\n")
            finally:
                for handle in files.values():
                    handle.close()
        outcome = source / f"Outcomes-{name.split('-')[-1]}.txt"
        if outcome.is_file():
            shutil.copyfile(outcome, out / outcome.name)
        written[name] = len(stays)
        logger.info("exported %d stays of %s to %s; dropped before writing: %s", len(stays), folder, target,
                    count_summary(counts))
    return written


# ---- reading -------------------------------------------------------------------------------------------


def _resources_in_file(path: Path) -> Iterable[dict[str, Any]]:
    """The resources of a Bundle (``entry[].resource``), a single resource (.json) or an NDJSON file."""
    if path.suffix == ".ndjson":
        with open(path) as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}, line {number}: not JSON ({error})") from None
        return
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    if not isinstance(data, dict) or "resourceType" not in data:
        raise ValueError(f"{path}: not a FHIR resource (no resourceType)")
    if data["resourceType"] == "Bundle":
        yield from (entry["resource"] for entry in data.get("entry", []) if "resource" in entry)
    else:
        yield data


def read_fhir_folder(folder: str | Path, counts: Counter | None = None,
                     mapping: dict[str, Any] | None = None) -> list[Stay]:
    """Every stay in the *.json (Bundles or resources) and *.ndjson files of ``folder``."""
    folder = Path(folder)
    files = sorted(folder.glob("*.json")) + sorted(folder.glob("*.ndjson"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.json or *.ndjson FHIR files")
    return read_fhir_resources((r for path in files for r in _resources_in_file(path)), counts, mapping)


def read_fhir_file(path: str | Path, counts: Counter | None = None,
                   mapping: dict[str, Any] | None = None) -> list[Stay]:
    """Every stay in one FHIR file: a Bundle or a resource (.json), or an NDJSON export (.ndjson)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such FHIR file")
    return read_fhir_resources(_resources_in_file(path), counts, mapping)


def _patient_key(reference: str | None) -> str | None:
    return reference.split("/", 1)[1] if reference and reference.startswith("Patient/") else None


def read_fhir_resources(resources: Iterable[dict[str, Any]], counts: Counter | None = None,
                        mapping: dict[str, Any] | None = None) -> list[Stay]:
    """Group Patient, Encounter and Observation resources by patient into cleaned stays (module docstring);
    other resource types are ignored. ``counts`` collects the dropped values per rule."""
    counts = Counter() if counts is None else counts
    mapping = mapping or load_mapping()
    patients: dict[str, dict] = {}
    admissions: dict[str, datetime] = {}
    observations: dict[str, list[dict]] = defaultdict(list)
    for resource in resources:
        kind = resource.get("resourceType")
        if kind == "Patient":
            if resource.get("id") in patients:
                raise ValueError(f"Patient {resource.get('id')!r} appears twice in the FHIR input")
            patients[resource.get("id")] = resource
        elif kind == "Encounter":
            key, start = _patient_key(resource.get("subject", {}).get("reference")), resource.get("period", {})
            if key is not None and start.get("start"):
                moment = _parse_time(start["start"], f"Encounter {resource.get('id')}")
                admissions[key] = min(moment, admissions.get(key, moment))
        elif kind == "Observation":
            observations[_patient_key(resource.get("subject", {}).get("reference"))].append(resource)
    counts["no_patient"] += sum(len(v) for k, v in observations.items() if k not in patients)
    return [_stay(patient, observations.get(key, []), admissions.get(key), mapping, counts)
            for key, patient in patients.items()]


def _lookup(mapping: dict[str, Any]) -> dict[tuple[str, str], tuple[str, str]]:
    """(system, code) -> ("variables" or "descriptors", name); a code shared by both maps to the variable."""
    table = {}
    for section in ("descriptors", "variables"):
        for name, entry in mapping[section].items():
            table[(entry["system"], entry["code"])] = (section, name)
    return table


def _stay(patient: dict, observations: list[dict], admission: datetime | None, mapping: dict[str, Any],
          counts: Counter) -> Stay:
    table, category = _lookup(mapping), (mapping["local_system"], mapping["descriptor_category"])
    identifiers = [i.get("value") for i in patient.get("identifier", [])
                   if i.get("system") == mapping["record_id_system"]]
    record_id = str(identifiers[0] if identifiers else patient.get("id"))
    timed = []
    for obs in observations:
        if obs.get("status") in _DROPPED_STATUS:
            counts["entered_in_error"] += 1
        elif not obs.get("effectiveDateTime"):
            counts["no_time"] += 1
        else:
            timed.append((_parse_time(obs["effectiveDateTime"], f"Observation {obs.get('id')}"), obs))
    if admission is None and timed:
        admission = min(moment for moment, _ in timed)
    statics: dict[str, float] = {"Gender": GENDERS.get(patient.get("gender"), float("nan"))}
    events = []
    for moment, obs in sorted(timed, key=lambda pair: pair[0]):
        codings = [(c.get("system"), c.get("code")) for c in obs.get("code", {}).get("coding", [])]
        found = next((table[c] for c in codings if c in table), None)
        if found is None:
            counts["unknown_variable"] += 1
            continue
        section, name = found
        cats = {(c.get("system"), c.get("code")) for cat in obs.get("category", []) for c in cat.get("coding", [])}
        if category in cats and name in mapping["descriptors"]:
            section = "descriptors"
        entry = mapping[section][name]
        quantity = obs.get("valueQuantity") or {}
        unit = quantity.get("code", quantity.get("unit"))
        if quantity.get("value") is None:
            counts["missing"] += 1
        elif unit != entry["unit"]:
            counts["unit_mismatch"] += 1
        elif section == "descriptors":
            statics.setdefault(name, float(quantity["value"]))
        else:
            minutes = int((moment - admission).total_seconds() // 60)
            events.append((minutes, name, float(quantity["value"])))
    minutes, variables, values = clean_events(events, counts)
    return Stay(record_id, clean_statics({k: statics.get(k) for k in STATIC_VARIABLES}, counts), minutes,
                variables, values)
