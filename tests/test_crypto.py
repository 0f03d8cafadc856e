"""Envelope encryption: sealing, key-encryption keys and their rotation, data keys in the
database (both databases), the blind index, key file modes, and the query-less access log."""

from __future__ import annotations

import logging
import os
import stat

import pytest
from sqlalchemy import select

from renkei.crypto import (
    CryptoError,
    DataKey,
    KeyDestroyed,
    Keyring,
    key_id_of,
    open_sealed,
    rewrap_all,
    seal,
)
from renkei.keys import KeyMaterialError, LocalKekFiles
from services.logs import ACCESS_LOGGER, install
from services.registry import service as registry
from services.registry.models import RegistryIdentifier, RegistryResource

DEK = bytes(range(32))


def test_sealed_value_opens_with_its_key_and_aad() -> None:
    blob = seal("k1", DEK, "三沢 花子".encode(), b"event|e1|bundle")
    assert key_id_of(blob) == "k1"
    assert "三沢".encode() not in blob
    assert open_sealed(DEK, blob, b"event|e1|bundle") == "三沢 花子".encode()


def test_tampered_ciphertext_is_refused() -> None:
    blob = bytearray(seal("k1", DEK, b"secret", b"aad"))
    blob[-1] ^= 1
    with pytest.raises(CryptoError):
        open_sealed(DEK, bytes(blob), b"aad")


def test_a_ciphertext_moved_to_another_row_is_refused() -> None:
    blob = seal("k1", DEK, b"secret", b"registry_resource|Patient|p1|body")
    with pytest.raises(CryptoError):
        open_sealed(DEK, blob, b"registry_resource|Patient|p2|body")


def test_a_forged_key_id_in_the_header_is_refused() -> None:
    blob = seal("k1", DEK, b"secret", b"aad")
    forged = blob[:2] + b"k2" + blob[4:]  # same length id: only the header changes
    assert key_id_of(forged) == "k2"
    with pytest.raises(CryptoError):
        open_sealed(DEK, forged, b"aad")


def test_the_wrong_key_and_garbage_are_refused() -> None:
    blob = seal("k1", DEK, b"secret", b"aad")
    with pytest.raises(CryptoError):
        open_sealed(bytes(32), blob, b"aad")
    for garbage in (b"", b"\x01", b"{}", b"\x02" + bytes(40)):
        with pytest.raises(CryptoError):
            key_id_of(garbage)


def test_rotation_new_wraps_use_the_new_kek_old_ones_still_unwrap(tmp_path) -> None:
    kek = LocalKekFiles(tmp_path / "keys")
    first_id, first = kek.wrap(DEK)
    rotated = kek.rotate()
    assert rotated != first_id and kek.current_id() == rotated
    second_id, second = kek.wrap(DEK)
    assert second_id == rotated
    assert kek.unwrap(first_id, first) == DEK == kek.unwrap(second_id, second)
    # Another process (a hub) sees the rotation at its next wrap, and loads the new KEK file.
    other = LocalKekFiles(tmp_path / "keys")
    assert other.wrap(DEK)[0] == rotated
    with pytest.raises(KeyMaterialError):
        kek.unwrap(first_id, second)  # a wrap is bound to its KEK id
    with pytest.raises(KeyMaterialError):
        kek.unwrap("kek../../etc", first)


def test_key_files_are_0600_in_a_0700_directory(tmp_path) -> None:
    old = os.umask(0o022)  # even under a permissive umask
    try:
        keyring = Keyring.local(tmp_path / "keys")
        keyring.kek.wrap(DEK)
        keyring.kek.rotate()
    finally:
        os.umask(old)
    paths = list((tmp_path / "keys").rglob("*"))
    assert len([p for p in paths if p.is_file()]) >= 4  # blind index, patient key, 2 KEKs
    for path in [tmp_path / "keys", *paths]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_blind_index_and_patient_key_are_keyed_hmacs(tmp_path) -> None:
    one, other = Keyring.local(tmp_path / "a"), Keyring.local(tmp_path / "b")
    assert one.blind("urn:x", "00012345") == one.blind("urn:x", "00012345")
    assert one.blind("urn:x", "00012345") != one.blind("urn:y", "00012345")
    assert one.blind("urn:x", "00012345") != other.blind("urn:x", "00012345")
    assert "00012345" not in one.blind("urn:x", "00012345")
    assert one.patient_key("p01") != other.patient_key("p01")
    assert "p01" not in one.patient_key("p01") and len(one.patient_key("p01")) == 32


def test_access_log_prints_the_path_without_the_query_string(caplog) -> None:
    install()
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        logging.getLogger(ACCESS_LOGGER).info(
            '%s - "%s %s HTTP/%s" %d',
            "127.0.0.1:5",
            "GET",
            "/fhir/Patient?identifier=urn:x|00012345",
            "1.1",
            200,
        )
    assert "/fhir/Patient" in caplog.text and "00012345" not in caplog.text


# -- in the database -------------------------------------------------------------------------

PATIENT = {
    "resourceType": "Patient",
    "id": "pz",
    "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.11310000001", "value": "77001"}],
    "name": [{"text": "秘密 太郎"}],
    "birthDate": "1930-01-02",
}


async def test_patient_data_is_sealed_and_found_through_the_blind_index(db_sessions) -> None:
    async with db_sessions() as session:
        await registry.write(session, "Patient", PATIENT, "pz")
        await session.commit()
    async with db_sessions() as session:
        row = await session.get(RegistryResource, ("Patient", "pz"))
        assert row.body == {} and "秘密".encode() not in row.body_sealed
        values = (await session.scalars(select(RegistryIdentifier.value))).all()
        assert values and not any("77001" in v for v in values)
        assert (await registry.read(session, "Patient", "pz")).body["name"][0][
            "text"
        ] == "秘密 太郎"
        system = PATIENT["identifier"][0]["system"]
        for token in (f"{system}|77001", "77001"):
            found = await registry.search(session, "Patient", {"identifier": token})
            assert [r.id for r in found] == ["pz"], token
        assert await registry.search(session, "Patient", {"identifier": f"{system}|77002"}) == []
        # A sealed body copied onto another patient's row does not open there.
        await registry.write(session, "Patient", {**PATIENT, "id": "py", "identifier": []}, "py")
        other = await session.get(RegistryResource, ("Patient", "py"))
        other.body_sealed = row.body_sealed
        await session.flush()
        with pytest.raises(CryptoError):
            await registry.read(session, "Patient", "py")


async def test_rotation_rewraps_every_data_key_and_data_still_opens(db_sessions) -> None:
    async with db_sessions() as session:
        await registry.write(session, "Patient", PATIENT, "pz")
        await session.commit()
    keyring: Keyring = db_sessions.kw["info"]["keyring"]
    old_kek = keyring.kek.current_id()
    new_kek = keyring.kek.rotate()
    keyring.invalidate([k for k in list(keyring._deks)])  # force unwrapping from the table
    async with db_sessions() as session:
        assert await rewrap_all(session, keyring) >= 1
        kek_ids = set((await session.scalars(select(DataKey.kek_id))).all())
        assert kek_ids == {new_kek} and old_kek not in kek_ids
    keyring.invalidate(list(keyring._deks))
    async with db_sessions() as session:
        assert (await registry.read(session, "Patient", "pz")).body["birthDate"] == "1930-01-02"
        ref = await keyring.new_key(session)
        row = await session.get(DataKey, ref.key_id)
        assert row.kek_id == new_kek


async def test_a_destroyed_data_key_opens_nothing(db_sessions) -> None:
    keyring: Keyring = db_sessions.kw["info"]["keyring"]
    async with db_sessions() as session:
        ref = await keyring.patient_dek(session, "pq")
        blob = keyring.seal(ref, b"secret", "x")
        await keyring.destroy(session, [ref.key_id])
        await session.commit()
    async with db_sessions() as session:
        with pytest.raises(KeyDestroyed):
            await keyring.open(session, blob, "x")
        with pytest.raises(KeyDestroyed):
            await keyring.patient_dek(session, "pq")
