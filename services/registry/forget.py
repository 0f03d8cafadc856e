"""Crypto-shredding a patient: ``renkei patient forget ID``.

The patient's data keys are destroyed, so everything sealed under them (the registry Patient,
CareTeam and Consent bodies, the event bundles, the Kafka records and the outbox values) can no
longer be read anywhere, backups included. The rows stay, marked, so that the Patient answers
410 Gone, notifications show a neutral placeholder, and a later message naming the same patient
(recognised through the blind index) is kept but never routed.
"""

from __future__ import annotations

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from renkei.crypto import DataKey, keyring_of
from renkei.db import utcnow
from schemas.audit import AuditRecord
from services.audit.emit import emit_records
from services.intake.models import STATUS_ACCEPTED, STATUS_FORGOTTEN, Event
from services.registry.models import RegistryReference, RegistryResource


async def forget_patient(
    session: AsyncSession, patient_id: str, audit: AuditRecord | None = None
) -> bool:
    """Destroy the patient's keys and mark their data forgotten (commits). False: no such
    Patient in the registry. ``audit``: the patient.forgotten record, committed with it."""
    patient = await session.get(RegistryResource, ("Patient", patient_id))
    if patient is None:
        return False
    now = utcnow()
    key_ids = list(
        (await session.scalars(select(DataKey.id).where(DataKey.patient_id == patient_id))).all()
    )
    # Keys adopted from events linked to the patient were re-sealed under the patient's key
    # (intake.link_patient), so the patient's own key is all there is to destroy.
    await keyring_of(session).destroy(session, key_ids)
    target = f"Patient/{patient_id}"

    def about_patient(resource_type: str, name: str):  # noqa: ANN202 - a SQL condition
        ids = select(RegistryReference.resource_id).where(
            RegistryReference.resource_type == resource_type,
            RegistryReference.name == name,
            RegistryReference.target == target,
        )
        return (RegistryResource.resource_type == resource_type) & RegistryResource.id.in_(ids)

    await session.execute(
        update(RegistryResource)
        .where(
            or_(
                (RegistryResource.resource_type == "Patient") & (RegistryResource.id == patient_id),
                about_patient("CareTeam", "subject"),
                about_patient("Consent", "patient"),
            )
        )
        .values(forgotten_at=now, body_sealed=None, body={})
        .execution_options(synchronize_session=False)
    )
    # Events not routed yet are never routed now (the relay only republishes accepted ones).
    await session.execute(
        update(Event)
        .where(
            Event.patient_id == patient_id,
            Event.routed_at.is_(None),
            Event.status == STATUS_ACCEPTED,
        )
        .values(status=STATUS_FORGOTTEN)
    )
    if audit is not None:
        await emit_records(session, [audit])
    await session.commit()
    return True
