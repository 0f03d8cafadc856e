"""The CLI's progress line (services/progress.py): its format, and where and when it is drawn."""

from __future__ import annotations

import io

from services.progress import Progress, duration, progress_line


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_line_says_count_share_rate_and_time_left() -> None:
    line = progress_line("re-wrapped", 12_000, 100_000, elapsed=12_000 / 850)
    assert line == "re-wrapped 12,000/100,000 (12%) 850/s ETA 1m44s"
    assert progress_line("posted", 40, None, elapsed=2.0) == "posted 40 20/s"
    assert progress_line("re-wrapped", 5, 5, elapsed=1.0) == "re-wrapped 5/5 (100%) 5/s"
    assert progress_line("re-wrapped", 0, 0, elapsed=0.0) == "re-wrapped 0/0"


def test_durations() -> None:
    assert [duration(s) for s in (0, 45.4, 103, 3599, 7500)] == [
        "0s", "45s", "1m43s", "59m59s", "2h05m",
    ]  # fmt: skip


def test_silent_unless_a_terminal_or_asked() -> None:
    quiet = io.StringIO()
    line = Progress("re-wrapped", 10, stream=quiet)
    line.update(5)
    line.finish()
    assert quiet.getvalue() == ""


def test_asked_for_writes_whole_lines_now_and_then() -> None:
    clock, log = Clock(), io.StringIO()
    line = Progress("re-wrapped", 1000, enabled=True, stream=log, clock=clock)
    clock.now += 1
    line.update(100)  # the first update is drawn
    clock.now += 1
    line.update(200)  # too soon after it for a log
    clock.now += 5
    line.update(900)
    clock.now += 1
    line.update(1000)  # too soon to draw, but the end is always drawn
    line.finish()
    line.finish()  # once
    assert log.getvalue().splitlines() == [
        "re-wrapped 100/1,000 (10%) 100/s ETA 9s",
        "re-wrapped 900/1,000 (90%) 129/s ETA 1s",
        "re-wrapped 1,000/1,000 (100%) 125/s",
    ]


def test_a_terminal_redraws_one_line_in_place() -> None:
    clock, terminal = Clock(), Terminal()
    line = Progress("registered", 4, stream=terminal, clock=clock)
    for _ in range(4):
        clock.now += 0.5
        line.advance()
    line.finish()
    text = terminal.getvalue()
    assert text.count("\n") == 1 and text.endswith("registered 4/4 (100%) 2/s\n")
    assert text.count("\r\x1b[K") == 5
