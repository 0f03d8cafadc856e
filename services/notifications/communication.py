"""A notification as a FHIR R4 Communication (what care managers and nurses read)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from consumers.routing.rules import Due, due_for
from schemas.canonical import (
    ACT_REASON_SYSTEM,
    BREAK_THE_GLASS,
    CONTENT_LEVEL_EXTENSION,
    EVENT_ID_SYSTEM,
)
from schemas.events import (
    CARE_TEAM_ROLE_SYSTEM,
    EVENT_RULES,
    EVENT_SYSTEM,
    CareTeamRole,
    EventType,
)
from services.intake.models import Event
from services.notifications.models import Notification

STATUS_EXTENSION = "https://renkei-hub.example.jp/fhir/StructureDefinition"


def status_of(notification: Notification) -> str:
    """FHIR EventStatus: in-progress until acknowledged (対応済), then completed.

    既読 is not a status in R4 (EventStatus has no "received"): it is ``Communication.received``.
    """
    return "completed" if notification.acknowledged_at is not None else "in-progress"


# What a recipient reads once the patient was forgotten (their data keys destroyed).
FORGOTTEN_PATIENT = "（削除された患者）/ forgotten patient"
UNNAMED_PATIENT = "（氏名未登録）"


@dataclass(frozen=True)
class Shown:
    """What the hub may show of the patient: the registry's name (never the message's) and
    the message itself (None once forgotten)."""

    patient_name: str
    bundle: dict[str, Any] | None


ESCALATION_EXTENSION = f"{STATUS_EXTENSION}/escalation"
_ESCALATED_TO = {
    1: ("副主治医", "the backup physician"),
    2: ("急変時入院先", "the emergency hospital"),
    3: ("地域連携相談窓口", "the region office"),
}


def _care_team_role(notification: Notification) -> CareTeamRole | None:
    """The recipient's care-team role; None for the region office (an escalation's last step)."""
    try:
        return CareTeamRole(notification.care_team_role)
    except ValueError:
        return None


def _escalation_due(notification: Notification) -> Due:
    ja, en = _ESCALATED_TO.get(notification.escalation_step, ("", "you"))
    return Due(
        notification.due_at,
        f"エスカレーション（第{notification.escalation_step}段・{ja}宛）: "
        "急変の通知に対応済の記録がありません。至急確認してください",
        f"Escalation (step {notification.escalation_step}, to {en}): nobody has acknowledged "
        "this acute change; respond now",
    )


def to_communication(  # noqa: ANN001 - zone: ZoneInfo
    notification: Notification, event: Event, zone, shown: Shown
) -> dict[str, Any]:
    event_type = EventType(notification.category)
    rule = EVENT_RULES[event_type]
    role = _care_team_role(notification)
    at = event.occurred_at or event.accepted_at
    if notification.escalation_step:
        due = _escalation_due(notification)
    else:
        due = due_for(event_type, role or CareTeamRole.PRIMARY_PHYSICIAN,
                      notification.priority, at, zone)  # fmt: skip
    when = at.astimezone(zone).strftime("%Y-%m-%d %H:%M")
    text = f"【{rule.display_ja}】{shown.patient_name} 様（{when}）: {due.text_ja}"
    communication: dict[str, Any] = {
        "resourceType": "Communication",
        "id": notification.id,
        "meta": {
            "lastUpdated": (
                notification.acknowledged_at or notification.read_at or notification.sent
            ).isoformat()
        },
        "identifier": [{"system": EVENT_ID_SYSTEM, "value": event.id}],
        "status": status_of(notification),
        "category": [
            {
                "coding": [
                    {"system": EVENT_SYSTEM, "code": event_type.value, "display": rule.display_ja}
                ]
            }
        ],
        "priority": notification.priority,
        "subject": {"reference": f"Patient/{notification.patient_id}"},
        "topic": {"text": rule.display_en},
        "sent": notification.sent.isoformat(),
        "recipient": [{"reference": notification.recipient}],
        "sender": {"reference": f"Organization/{event.sender_org_id}"},
        "reasonCode": [
            {"coding": [{"system": CARE_TEAM_ROLE_SYSTEM, "code": role.value}]}
            if role is not None
            else {"text": notification.care_team_role}  # the region office: no team role
        ],
        "payload": [{"contentString": text}, {"contentString": due.text_en}],
        "extension": [{"url": CONTENT_LEVEL_EXTENSION, "valueCode": notification.content}],
    }
    # Minimum necessary: a summary says what happened and what is due, never the message
    # (nor once the patient was forgotten: shown.bundle is None).
    if notification.content == "full" and shown.bundle is not None:
        communication["payload"].append(
            {
                "contentAttachment": {
                    "contentType": "application/fhir+json",
                    "title": f"{rule.display_ja} message bundle",
                    "data": base64.b64encode(
                        json.dumps(shown.bundle, ensure_ascii=False).encode()
                    ).decode(),
                }
            }
        )
    if notification.break_glass:
        # Disclosed in an emergency without (or over) the patient's consent: say so where
        # every FHIR client looks for it (HL7 v3 ActReason BTG, "break the glass").
        communication["meta"]["security"] = [
            {"system": ACT_REASON_SYSTEM, "code": BREAK_THE_GLASS, "display": "break the glass"}
        ]
    if notification.read_at is not None:
        communication["received"] = notification.read_at.isoformat()
    if due.at is not None:
        communication["extension"].append(
            {"url": f"{STATUS_EXTENSION}/due-by", "valueDateTime": due.at.isoformat()}
        )
    if notification.escalation_step:
        # An escalation step (services/escalation): which one, and the stat notification
        # nobody acknowledged in time.
        communication["extension"].append(
            {
                "url": ESCALATION_EXTENSION,
                "extension": [
                    {"url": "step", "valueInteger": notification.escalation_step},
                    {
                        "url": "escalationOf",
                        "valueReference": {
                            "reference": f"Communication/{notification.escalation_of}"
                        },
                    },
                ],
            }
        )
    if notification.acknowledged_at is not None:
        communication["extension"].append(
            {
                "url": f"{STATUS_EXTENSION}/acknowledged",
                "valueDateTime": notification.acknowledged_at.isoformat(),
            }
        )
    # The receipt as the sender's GET /fhir/MessageHeader/{id}/$status shows it: delivered
    # (sent), read (received), acknowledged, and who read / acknowledged.
    communication["extension"].append(
        {"url": f"{STATUS_EXTENSION}/receipt-status", "valueCode": receipt_status(notification)}
    )
    for name, who in (
        ("read-by", notification.read_by),
        ("acknowledged-by", notification.acknowledged_by),
    ):
        if who is not None:
            communication["extension"].append(
                {"url": f"{STATUS_EXTENSION}/{name}", "valueReference": {"reference": who}}
            )
    return communication


def receipt_status(notification: Notification) -> str:
    """delivered, read (既読) or acknowledged (対応済)."""
    if notification.acknowledged_at is not None:
        return "acknowledged"
    if notification.read_at is not None:
        return "read"
    return "delivered"
