"""The benchmark's region: the demo region (三沢市モデル地域) plus a second hospital and bench
patients on care team A with consent, so that an admission reaches 5 recipients (primary
physician, visiting nurse, care manager, pharmacy, care service) as it does for p01, and load
spreads over many patient keys (partitions) instead of one.

The probe patient is the demo's p01; load is about the bench patients, so the probe's
notifications are found by ``subject=Patient/p01``.
"""

from __future__ import annotations

import copy
from typing import Any

from schemas.events import EventType
from services.demo_region import (
    PATIENT_ID_SYSTEM,
    TEAM_A,
    care_team,
    consent,
    organization,
    region_resources,
    sample_message,
    sample_message_about,
)

HOSPITAL = ("misawa-general-hospital", "1310000001")
SECOND_HOSPITAL = ("bench-north-hospital", "1310000091")
NURSE_STATION = "misawa-visiting-nurse-1"
CARE_MANAGER = ("misawa-care-plan-1", "cm-sato")
PROBE_PATIENT = "p01"
BENCH_PATIENTS = 20
ADMISSION_RECIPIENTS = 5  # TEAM_A, consent permit


def bench_patient_id(index: int) -> str:
    return f"bench-p{index:02d}"


def chart_number(hospital_code: str, index: int) -> str:
    return f"{hospital_code[-2:]}-{index:06d}"


def bench_patient(index: int) -> dict[str, Any]:
    pid = bench_patient_id(index)
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [
            {"system": f"{PATIENT_ID_SYSTEM}{code}", "value": chart_number(code, index)}
            for _org, code in (HOSPITAL, SECOND_HOSPITAL)
        ],
        "name": [{"use": "official", "text": f"ベンチ 患者{index}", "family": "ベンチ"}],
        "gender": "female" if index % 2 else "male",
        "birthDate": f"19{30 + index % 20}-04-01",
    }


def bench_region(patients: int = BENCH_PATIENTS) -> list[dict[str, Any]]:
    """Everything to PUT, referents first."""
    out = region_resources()
    out.append(organization(SECOND_HOSPITAL[0], "ベンチ北病院", "prov", SECOND_HOSPITAL[1]))
    for index in range(1, patients + 1):
        pid = bench_patient_id(index)
        out.append(bench_patient(index))
        out.append(care_team(pid, TEAM_A))
        out.append(consent(pid, "permit"))
    return out


def load_message(
    event: EventType, sender: tuple[str, str], index: int, message_id: str = "mh"
) -> dict[str, Any]:
    """The contract's sample for ``event``, sent by ``sender`` (org id, institution code) about
    bench patient ``index`` in the sender's own numbering."""
    bundle = copy.deepcopy(sample_message(event))
    header = bundle["entry"][0]["resource"]
    header["id"] = message_id
    header["sender"] = {"reference": f"Organization/{sender[0]}"}
    patient = bench_patient(index)
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Patient":
            system = f"{PATIENT_ID_SYSTEM}{sender[1]}"
            resource["identifier"] = [{"system": system, "value": chart_number(sender[1], index)}]
            resource["birthDate"] = patient["birthDate"]
    return bundle


def probe_message(event: EventType, message_id: str) -> dict[str, Any]:
    """A message about the probe patient from the event's sample sender (the hospital for an
    admission, the visiting-nurse station for an acute change)."""
    bundle = sample_message_about(event, PROBE_PATIENT)
    bundle["entry"][0]["resource"]["id"] = message_id
    return bundle
