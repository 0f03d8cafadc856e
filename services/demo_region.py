"""The demo region (三沢市モデル地域): organizations, people, ten patients, care teams, consents.

Used by ``renkei demo`` and by the end-to-end tests, so both exercise the same region. Names
and identifiers are invented.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from schemas.events import CARE_TEAM_ROLE_SYSTEM, EventType

PATIENT_ID_SYSTEM = "urn:oid:1.2.392.100495.20.3.51.1"  # + 10-digit institution code
ORG_ID_SYSTEM = "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no"

# id, name, kind (what the organization is), 10-digit institution code
ORGANIZATIONS = [
    ("misawa-general-hospital", "三沢総合病院", "prov", "1310000001"),
    ("misawa-home-clinic", "三沢在宅クリニック", "prov", "1310000002"),
    ("towada-naika-clinic", "十和田内科クリニック", "prov", "1310000003"),
    ("hachinohe-home-clinic", "八戸在宅診療所", "prov", "1310000004"),
    ("misawa-visiting-nurse-1", "みさわ訪問看護ステーション", "prov", "1360000001"),
    ("aoba-visiting-nurse", "あおば訪問看護ステーション", "prov", "1360000002"),
    ("misawa-care-plan-1", "三沢居宅介護支援事業所", "prov", "0270000001"),
    ("himawari-care-plan", "ひまわりケアプランセンター", "prov", "0270000002"),
    ("chuo-pharmacy", "中央薬局", "prov", "1340000001"),
    ("sakura-day-service", "デイサービスさくら", "prov", "0270000101"),
    ("misawa-community-support", "三沢市地域包括支援センター", "govt", "0270000201"),
]

PRACTITIONERS = [
    # practitioner id, name, role id, organization, care-team role it plays
    ("cm-sato", "佐藤 美穂", "cm-sato-role", "misawa-care-plan-1", "care-manager"),
    ("cm-kimura", "木村 健", "cm-kimura-role", "himawari-care-plan", "care-manager"),
    ("ns-tanaka", "田中 由美", "ns-tanaka-role", "misawa-visiting-nurse-1", "visiting-nurse"),
    ("dr-misawa", "三沢 一郎", "dr-misawa-role", "misawa-home-clinic", "primary-physician"),
]

# id, family, given, kana, gender, birth date, hospital chart number, clinic chart number
PATIENTS = [
    ("p01", "三沢", "花子", "ミサワ ハナコ", "female", "1936-05-12", "00012345", "A-0001"),
    ("p02", "小川原", "太郎", "オガワラ タロウ", "male", "1931-02-03", "00012346", "A-0002"),
    ("p03", "古間木", "きよ", "フルマキ キヨ", "female", "1929-09-30", "00012347", "A-0003"),
    ("p04", "岡三沢", "正男", "オカミサワ マサオ", "male", "1940-07-21", "00012348", "B-0001"),
    ("p05", "大津", "ハル", "オオツ ハル", "female", "1933-03-15", "00012349", "B-0002"),
    ("p06", "淋代", "勝", "サビシロ マサル", "male", "1938-11-08", "00012350", "B-0003"),
    ("p07", "天ケ森", "トシ", "アマガモリ トシ", "female", "1927-12-24", "00012351", "C-0001"),
    ("p08", "谷地頭", "茂", "ヤチガシラ シゲル", "male", "1935-06-01", "00012352", "C-0002"),
    ("p09", "六川目", "ふみ", "ロッカワメ フミ", "female", "1930-04-17", "00012353", "C-0003"),
    ("p10", "塩釜", "昭", "シオガマ アキラ", "male", "1942-01-30", "00012354", "C-0004"),
]

# Care teams: which organization (or PractitionerRole) plays which role, per group of patients.
TEAM_A = {
    "primary-physician": "PractitionerRole/dr-misawa-role",
    "backup-physician": "Organization/towada-naika-clinic",
    "visiting-nurse": "Organization/misawa-visiting-nurse-1",
    "care-manager": "PractitionerRole/cm-sato-role",
    "pharmacy": "Organization/chuo-pharmacy",
    "care-service": "Organization/sakura-day-service",
    "community-support-center": "Organization/misawa-community-support",
    "emergency-hospital": "Organization/misawa-general-hospital",
}
TEAM_B = {
    "primary-physician": "Organization/hachinohe-home-clinic",
    "backup-physician": "Organization/misawa-home-clinic",
    "visiting-nurse": "Organization/aoba-visiting-nurse",
    "care-manager": "PractitionerRole/cm-kimura-role",
    "pharmacy": "Organization/chuo-pharmacy",
    "community-support-center": "Organization/misawa-community-support",
    "emergency-hospital": "Organization/misawa-general-hospital",
}
ROLE_JA = {
    "primary-physician": "主治医",
    "backup-physician": "副主治医",
    "visiting-nurse": "訪問看護",
    "care-manager": "ケアマネジャー",
    "pharmacy": "薬局",
    "care-service": "介護サービス",
    "community-support-center": "地域包括支援センター",
    "emergency-hospital": "急変時入院先",
}
# Consent per patient: "permit", "deny:<org>" (permit, but withheld from one organization), or
# None (no consent on file: with the opt-in default nothing is shared).
CONSENTS = {
    "p01": "permit", "p02": "deny:chuo-pharmacy", "p03": None, "p04": "permit",
    "p05": "permit", "p06": "permit", "p07": "deny:sakura-day-service", "p08": "permit",
    "p09": "permit", "p10": "permit",
}  # fmt: skip


def organization(org_id: str, name: str, kind: str, code: str) -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "id": org_id,
        "active": True,
        "identifier": [{"system": ORG_ID_SYSTEM, "value": code}],
        "type": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                        "code": kind,
                    }
                ]
            }
        ],
        "name": name,
    }


def patient(row: tuple[str, ...]) -> dict[str, Any]:
    pid, family, given, kana, gender, birth, hospital_no, clinic_no = row
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [
            {"system": f"{PATIENT_ID_SYSTEM}{code}", "value": number}
            for code, number in chart_numbers(row).items()
        ],
        "name": [
            {"use": "official", "text": f"{family} {given}", "family": family, "given": [given]},
            {
                "use": "usual",
                "text": kana,
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation",
                        "valueCode": "SYL",
                    }
                ],
            },
        ],
        "gender": gender,
        "birthDate": birth,
    }


def care_team(pid: str, team: dict[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "CareTeam",
        "id": f"ct-{pid}",
        "status": "active",
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": "2025-04-01"},
        "participant": [
            {
                "role": [
                    {
                        "coding": [
                            {
                                "system": CARE_TEAM_ROLE_SYSTEM,
                                "code": role,
                                "display": ROLE_JA[role],
                            }
                        ]
                    }
                ],
                "member": {"reference": member},
                "period": {"start": "2025-04-01"},
            }
            for role, member in team.items()
        ],
    }


def consent(pid: str, rule: str) -> dict[str, Any]:
    provision: dict[str, Any] = {"type": "permit", "period": {"start": "2025-04-01"}}
    if rule.startswith("deny:"):
        provision["provision"] = [
            {
                "type": "deny",
                "actor": [
                    {
                        "role": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                    "code": "IRCP",
                                }
                            ]
                        },
                        "reference": {"reference": f"Organization/{rule.removeprefix('deny:')}"},
                    }
                ],
            }
        ]
    return {
        "resourceType": "Consent",
        "id": f"consent-{pid}",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{pid}"},
        "dateTime": "2025-04-01T10:00:00+09:00",
        "policyRule": {"text": "在宅医療・介護連携に関する情報共有の同意"},
        "provision": provision,
    }


def region_resources() -> list[dict[str, Any]]:
    """Every resource of the region, in an order the registry accepts (referents first)."""
    out: list[dict[str, Any]] = [organization(*row) for row in ORGANIZATIONS]
    for pract_id, name, role_id, org_id, role in PRACTITIONERS:
        family, given = name.split(" ")
        out.append(
            {
                "resourceType": "Practitioner",
                "id": pract_id,
                "active": True,
                "name": [{"text": name, "family": family, "given": [given]}],
            }
        )
        out.append(
            {
                "resourceType": "PractitionerRole",
                "id": role_id,
                "active": True,
                "practitioner": {"reference": f"Practitioner/{pract_id}"},
                "organization": {"reference": f"Organization/{org_id}"},
                "code": [{"coding": [{"system": CARE_TEAM_ROLE_SYSTEM, "code": role}]}],
            }
        )
    for index, row in enumerate(PATIENTS):
        out.append(patient(row))
        out.append(care_team(row[0], TEAM_A if index < 5 else TEAM_B))
        if CONSENTS[row[0]]:
            out.append(consent(row[0], CONSENTS[row[0]]))
    return out


def chart_numbers(row: tuple[str, ...]) -> dict[str, str]:
    """Institution code -> the patient's number there: the hospital's and the clinic's chart
    numbers, and the visiting-nurse station's 利用者番号 (senders quote only their own)."""
    pid, _family, _given, _kana, _gender, _birth, hospital_no, clinic_no = row
    return {"1310000001": hospital_no, "1310000002": clinic_no, "1360000001": f"V-{pid}"}


def sample_message_about(event: EventType, patient_id: str = "p01") -> dict[str, Any]:
    """The contract's sample, naming the patient as its sender knows them: the sender's own
    identifier system (senders are bound to their own patient ids) and the registry's birth
    date. A sender without a number for the patient keeps the sample's (it stays unmatched)."""
    bundle = sample_message(event)
    row = next(r for r in PATIENTS if r[0] == patient_id)
    sender = bundle["entry"][0]["resource"]["sender"]["reference"].removeprefix("Organization/")
    code = next(c for org_id, _name, _kind, c in ORGANIZATIONS if org_id == sender)
    numbers = chart_numbers(row)
    number = numbers.get(code)
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Patient":
            if number is not None:
                resource["identifier"] = [{"system": f"{PATIENT_ID_SYSTEM}{code}", "value": number}]
            resource["birthDate"] = row[5]
    return bundle


def sample_message(event: EventType) -> dict[str, Any]:
    """The contract's sample message for an event type (schemas/samples/, from shared/)."""
    text = resources.files("schemas").joinpath("samples", f"{event.value}.json").read_text("utf-8")
    return json.loads(text)


def organization_names() -> dict[str, str]:
    return {org_id: name for org_id, name, _kind, _code in ORGANIZATIONS}
