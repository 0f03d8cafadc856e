"""A progress line for long CLI work, on stderr:

    re-wrapped 12,000/100,000 (12%) 850/s ETA 1m43s

Shown when stderr is a terminal (redrawn in place) or when asked (``--progress``: one line per
update, at most every few seconds, for logs). Otherwise silent: stdout stays the command's
result and scripts that read it see nothing new.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

# A terminal redraws often; a log gets a line now and then.
TTY_EVERY_SECONDS = 0.2
LOG_EVERY_SECONDS = 5.0


def duration(seconds: float) -> str:
    """``45s``, ``1m43s``, ``2h05m``."""
    whole = max(int(round(seconds)), 0)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def progress_line(label: str, done: int, total: int | None, elapsed: float) -> str:
    """The line itself (no I/O): count, share, rate and time left, whatever is known."""
    rate = done / elapsed if elapsed > 0 else 0.0
    parts = [f"{label} {done:,}" if total is None else f"{label} {done:,}/{total:,}"]
    if total:
        parts.append(f"({min(done * 100 // total, 100)}%)")
    if elapsed > 0:
        parts.append(f"{rate:,.0f}/s")
    if total and rate > 0 and done < total:
        parts.append(f"ETA {duration((total - done) / rate)}")
    return " ".join(parts)


class Progress:
    """Counts work done and draws the line. ``enabled``: None = only on a terminal."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = self.tty if enabled is None else enabled
        self.clock = clock
        self.started = clock()
        self.done = 0
        self._drawn_at: float | None = None
        self._drawn_done: int | None = None

    def update(self, done: int) -> None:
        """``done`` so far (absolute: callbacks that report a running total)."""
        self.done = done
        now = self.clock()
        every = TTY_EVERY_SECONDS if self.tty else LOG_EVERY_SECONDS
        if self._drawn_at is None or now - self._drawn_at >= every:
            self._draw(now)

    def advance(self, count: int = 1) -> None:
        self.update(self.done + count)

    def finish(self) -> None:
        """The last line (unless a log already has it), and the terminal's line ended."""
        if self.tty or self._drawn_done != self.done:
            self._draw(self.clock(), final=True)

    def _draw(self, now: float, final: bool = False) -> None:
        if not self.enabled:
            return
        self._drawn_at, self._drawn_done = now, self.done
        line = progress_line(self.label, self.done, self.total, now - self.started)
        if self.tty:
            self.stream.write("\r\x1b[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
