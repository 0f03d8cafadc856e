"""The outbox doorbell: wake the relay of another process the moment a row is in the outbox.

In one process the intake (and the router, for the notification records it writes) sets an
``asyncio.Event`` the relay waits on. Under ``renkei up`` they are different processes, and
without a signal the relay would find the row only at its next poll (``relay_poll_seconds``).

Every relay process binds a Unix datagram socket in ``DATA_DIR/wakeup/`` (0700, the hub's
alone); a writer, after its commit, sends one byte to each socket there. Sending never blocks
and never fails the request: a full queue means that relay is woken already, a socket nobody
holds any more is forgotten, any other error is ignored and the relay's poll is the fallback.
The doorbell only shortens a wait; correctness never depends on it.

Relays on other hosts do not hear it: they poll (set ``RENKEI_RELAY_POLL_SECONDS`` lower).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

DOORBELL_DIR = "wakeup"
SUFFIX = ".sock"
# sun_path is 108 bytes on Linux: a longer data dir gets an abstract socket named after it.
MAX_SOCKET_PATH = 100
RING = b"\x01"


# The live streams' doorbell (services/notifications/stream.py): the router rings it after it
# committed notifications; the HTTP workers with a stream open listen.
STREAM_DOORBELL_DIR = "wakeup-stream"


def doorbell_dir(data_dir: Path, folder: str = DOORBELL_DIR) -> Path:
    return Path(data_dir).resolve() / folder


def _address(folder: Path, name: str) -> str | bytes:
    """Where a relay's socket is: its file, or (path too long) a Linux abstract name."""
    path = folder / name
    if len(str(path)) <= MAX_SOCKET_PATH:
        return str(path)
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:32]
    return b"\0renkei-wakeup-" + digest.encode()


class Doorbell:
    """The writers' side: one byte to every relay listening in the data dir."""

    def __init__(self, data_dir: Path, folder: str = DOORBELL_DIR) -> None:
        self.folder = doorbell_dir(data_dir, folder)
        self._socket: socket.socket | None = None
        self._seen: int | None = None  # the folder's mtime when ``_names`` was read
        self._names: list[str] = []

    def ring(self) -> None:
        """Non-blocking, never raises: the relay's poll remains the fallback."""
        try:
            self._ring()
        except OSError as error:
            log.debug("outbox doorbell not rung (%s)", type(error).__name__)

    def _ring(self) -> None:
        for name in self._listeners():
            try:
                self._sender().sendto(RING, _address(self.folder, name))
            except BlockingIOError:
                pass  # its queue is full: that relay has been woken already
            except (ConnectionRefusedError, FileNotFoundError):
                self._forget(name)  # its relay is gone (killed before it could clean up)

    def _listeners(self) -> list[str]:
        """The folder's entries, read again only when it changed (a relay came or went)."""
        try:
            mtime = os.stat(self.folder).st_mtime_ns
        except FileNotFoundError:
            return []
        if mtime != self._seen:
            self._names = [n for n in os.listdir(self.folder) if n.endswith(SUFFIX)]
            self._seen = mtime
        return self._names

    def _sender(self) -> socket.socket:
        if self._socket is None:
            sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sender.setblocking(False)
            self._socket = sender
        return self._socket

    def _forget(self, name: str) -> None:
        with contextlib.suppress(OSError):
            (self.folder / name).unlink()
        self._seen = None

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class DoorbellListener:
    """The relay's side: a socket of its own in the folder; datagrams call ``on_ring``."""

    def __init__(
        self,
        data_dir: Path,
        on_ring: Callable[[], None],
        folder: str = DOORBELL_DIR,
        prefix: str = "relay",
    ) -> None:
        self.folder = doorbell_dir(data_dir, folder)
        self.on_ring = on_ring
        self.name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        self._socket: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        address = _address(self.folder, self.name)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.setblocking(False)
        listener.bind(address)
        if isinstance(address, bytes):
            # An abstract socket has no file: a file of that name tells the writers it exists.
            (self.folder / self.name).touch(mode=0o600)
        self._socket = listener
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(listener.fileno(), self._drain)

    def _drain(self) -> None:
        assert self._socket is not None
        while True:
            try:
                self._socket.recv(64)
            except BlockingIOError:
                break
            except OSError as error:
                if error.errno != errno.EINTR:
                    break
        self.on_ring()

    def close(self) -> None:
        listener, self._socket = self._socket, None
        if listener is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(listener.fileno())
        listener.close()
        with contextlib.suppress(OSError):
            (self.folder / self.name).unlink()


class OutboxSignal(asyncio.Event):
    """``hub.outbox_written``: the Event of this process's relay, and the doorbell of others.

    ``set()`` after a commit that wrote outbox rows. When this process runs a relay (it listens,
    ``listen()``), setting the Event is enough; otherwise the byte goes to the relay processes.
    """

    def __init__(self, data_dir: Path) -> None:
        super().__init__()
        self._data_dir = Path(data_dir)
        self._doorbell = Doorbell(self._data_dir)
        self._listener: DoorbellListener | None = None

    def set(self) -> None:
        super().set()
        if self._listener is None:
            self._doorbell.ring()

    def listen(self) -> None:
        """This process runs a relay: hear the other processes' writers. Idempotent."""
        if self._listener is None:
            # What the others ring sets this Event only: no ringing them back.
            listener = DoorbellListener(self._data_dir, lambda: asyncio.Event.set(self))
            listener.start()
            self._listener = listener

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._doorbell.close()


class RoutedSignal:
    """``hub.notifications_routed``: the live streams (services/notifications/stream.py) of
    this process, and the doorbell of the others. ``ring()`` after a commit that wrote
    notifications; the first stream of a process starts listening."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = Path(data_dir)
        self._doorbell = Doorbell(self._data_dir, STREAM_DOORBELL_DIR)
        self._listener: DoorbellListener | None = None
        self._waiters: set[asyncio.Event] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closing = False

    def ring(self) -> None:
        self._wake()
        self._doorbell.ring()  # never raises: the streams' poll remains the fallback

    def _wake(self) -> None:
        for waiter in self._waiters:
            waiter.set()

    def waiter(self) -> asyncio.Event:
        """An Event set when notifications were routed (or the hub is closing); this process
        starts listening for the other processes' rings with its first stream."""
        self._loop = asyncio.get_running_loop()
        if self._listener is None:
            listener = DoorbellListener(
                self._data_dir, self._wake, folder=STREAM_DOORBELL_DIR, prefix="stream"
            )
            try:
                listener.start()
                self._listener = listener
            except OSError as error:
                log.warning("stream doorbell not heard (%s); polling", type(error).__name__)
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        return waiter

    def release(self, waiter: asyncio.Event) -> None:
        self._waiters.discard(waiter)

    def close_streams(self) -> None:
        """The hub is stopping: every open stream says so and ends."""
        self.closing = True
        self._wake()

    def close_streams_threadsafe(self) -> None:
        """From a signal handler (uvicorn's ``handle_exit``)."""
        self.closing = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake)

    def close(self) -> None:
        self.close_streams()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._doorbell.close()
