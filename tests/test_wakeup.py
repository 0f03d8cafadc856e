"""The outbox doorbell (renkei.wakeup): writers in one process wake relays in others.

Unix datagrams are queued by the kernel at ``sendto``: whether a byte was sent is read at once
with a non-blocking ``recv``, no waiting.
"""

from __future__ import annotations

import asyncio
import socket

from renkei.wakeup import SUFFIX, Doorbell, DoorbellListener, OutboxSignal, _address, doorbell_dir


def other_relay(data_dir) -> socket.socket:
    """A bare socket where a relay of another process would listen."""
    folder = doorbell_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.setblocking(False)
    listener.bind(_address(folder, f"relay-other{SUFFIX}"))
    return listener


def rung(listener: socket.socket) -> bool:
    try:
        listener.recv(64)
    except BlockingIOError:
        return False
    return True


async def test_a_writer_wakes_the_relay_of_another_process(tmp_path) -> None:
    relay_side, writer_side = OutboxSignal(tmp_path), OutboxSignal(tmp_path)
    relay_side.listen()
    try:
        writer_side.set()  # the intake of an HTTP worker, after its commit
        await asyncio.wait_for(relay_side.wait(), 10)
    finally:
        relay_side.close()
        writer_side.close()
    assert list(doorbell_dir(tmp_path).iterdir()) == []  # the relay took its socket away


async def test_a_process_with_its_own_relay_rings_nobody(tmp_path) -> None:
    other = other_relay(tmp_path)
    signal = OutboxSignal(tmp_path)
    signal.listen()
    try:
        signal.set()
        assert signal.is_set() and not rung(other)
        lone_writer = OutboxSignal(tmp_path)
        lone_writer.set()
        assert rung(other)
    finally:
        signal.close()
        other.close()


def test_a_dead_relays_socket_is_forgotten_and_ringing_never_raises(tmp_path) -> None:
    Doorbell(tmp_path / "nowhere").ring()  # no relay has ever listened: nothing to do
    dead = other_relay(tmp_path)
    dead.close()  # killed: its file stays, nobody reads it
    assert len(list(doorbell_dir(tmp_path).iterdir())) == 1
    doorbell = Doorbell(tmp_path)
    doorbell.ring()
    assert list(doorbell_dir(tmp_path).iterdir()) == []
    doorbell.ring()
    doorbell.close()


async def test_a_data_dir_too_long_for_a_socket_path_still_rings(tmp_path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    woken = asyncio.Event()
    listener = DoorbellListener(deep, woken.set)
    listener.start()
    try:
        assert isinstance(_address(listener.folder, listener.name), bytes)  # abstract
        Doorbell(deep).ring()
        await asyncio.wait_for(woken.wait(), 10)
    finally:
        listener.close()
    assert list(doorbell_dir(deep).iterdir()) == []


def test_a_relay_that_does_not_read_does_not_block_the_writer(tmp_path) -> None:
    other = other_relay(tmp_path)
    doorbell = Doorbell(tmp_path)
    try:
        for _ in range(10_000):  # far beyond the socket's queue
            doorbell.ring()
        assert rung(other)
    finally:
        doorbell.close()
        other.close()
