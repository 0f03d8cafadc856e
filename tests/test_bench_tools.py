"""The benchmark's pure parts (tests/benchmarks/tools.py): percentiles, the wrk Lua script that
makes every request a distinct message, and the parser of wrk's output. Nothing is timed."""

from __future__ import annotations

import math
import re

import pytest

from schemas.events import EventType
from schemas.message import parse_message
from services.intake.service import content_digest
from tests.benchmarks import tools
from tests.benchmarks.region import (
    HOSPITAL,
    SECOND_HOSPITAL,
    bench_patient,
    bench_region,
    load_message,
)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert tools.percentile(values, 0.5) == 50
    assert tools.percentile(values, 0.99) == 99
    assert tools.percentile(values, 1.0) == 100
    assert tools.percentile(values, 0.0) == 1
    assert tools.percentile(reversed(values), 0.9) == 90
    assert tools.percentile([7.0], 0.99) == 7.0


def test_percentile_of_nothing_is_nan_and_lost_probes_lift_it() -> None:
    assert math.isnan(tools.percentile([], 0.5))
    assert math.isinf(tools.percentile([1.0, 2.0, math.inf], 0.99))
    with pytest.raises(ValueError):
        tools.percentile([1.0], 1.5)


def _literals(script: str) -> list[str]:
    """The Lua long-bracket strings of the variants table, in order."""
    return [m.group(2) for m in re.finditer(r"\[(=+)\[(.*?)\]\1\]", script, re.S)]


def _variants() -> list[tools.Variant]:
    return [
        tools.Variant(f"token-{n}", tools.body_template(load_message(EventType.ADMISSION, s, n)))
        for n, s in ((1, HOSPITAL), (2, SECOND_HOSPITAL), (3, HOSPITAL))
    ]


def test_lua_script_carries_each_variant_exactly() -> None:
    variants = _variants()
    script = tools.lua_script(variants, "run42")
    literals = _literals(script)
    assert len(literals) == 3 * len(variants)
    for i, variant in enumerate(variants):
        auth, before, after = literals[3 * i : 3 * i + 3]
        assert auth == f"Bearer {variant.token}"
        message_id = tools.message_id("run42", 1, 17)
        # What the script's request() concatenates is what fill_template gives.
        assert before + message_id + after == tools.fill_template(variant.template, message_id)
    assert 'local run = "run42"' in script
    assert "function delay()" not in script  # unpaced


def test_generated_bodies_are_distinct_messages_the_hub_parser_accepts() -> None:
    variants = _variants()
    seen_ids, digests = set(), set()
    for thread in (1, 2):
        for counter in range(1, 31):
            variant = variants[counter % len(variants)]  # as the script picks them
            message_id = tools.message_id("abc", thread, counter)
            raw = tools.fill_template(variant.template, message_id).encode("utf-8")
            message = parse_message(raw)
            assert message.event_type is EventType.ADMISSION
            assert message.message_id == message_id
            seen_ids.add(message.message_id)
            digests.add(content_digest(message.bundle))
    assert len(seen_ids) == len(digests) == 60  # never a 200 repeat


def test_bodies_name_the_patient_in_the_senders_own_numbering() -> None:
    patients = {r["id"]: r for r in bench_region() if r["resourceType"] == "Patient"}
    bundle = load_message(EventType.ADMISSION, SECOND_HOSPITAL, 4)
    patient = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    registered = patients["bench-p04"]
    assert patient["identifier"][0] in registered["identifier"]
    assert patient["identifier"][0]["system"].endswith(SECOND_HOSPITAL[1])
    assert patient["birthDate"] == bench_patient(4)["birthDate"] == registered["birthDate"]


def test_paced_script_spreads_the_rate_over_threads() -> None:
    script = tools.lua_script(_variants(), "r1", rate_per_second=500, threads=2)
    assert "function delay()" in script
    assert "local interval = 4.0" in script  # 2 threads at 250/s each: one request per 4 ms


def test_template_needs_one_slot_and_run_ids_are_plain() -> None:
    with pytest.raises(ValueError):
        tools.Variant("t", '{"no": "slot"}').halves()
    with pytest.raises(ValueError):
        tools.lua_script(_variants(), "not-plain")
    with pytest.raises(ValueError):
        tools.lua_script([], "r")


def test_long_string_survives_closing_brackets() -> None:
    text = "a]]b]=]c"
    literal = tools._lua_long_string(text)
    assert literal.startswith("[==[") and literal.endswith("]==]")
    assert literal[4:-4] == text


SCRIPT_OUTPUT = """Running 5s test @ http://127.0.0.1:18123
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    13.33ms    5.24ms 109.07ms   82.65%
  12181 requests in 5.05s, 3.24MB read
Requests/sec:   2411.71
BENCH_JSON {"requests":12181,"duration_us":5050767,"bytes":3396425,"errors":{"connect":0,"read":0,\
"write":0,"status":3,"timeout":2},"latency_us":{"p50":12710,"p90":18478,"p99":31376,"p999":56578,\
"max":109070,"mean":13325.7},"statuses":{"202":12170,"200":8,"429":3}}
"""


def test_parse_the_scripts_result_line() -> None:
    result = tools.parse_wrk(SCRIPT_OUTPUT)
    assert result.requests == 12181
    assert result.duration_s == pytest.approx(5.050767)
    assert result.accepted == 12170
    assert result.statuses[200] == 8
    assert result.non_2xx == 3
    assert result.socket_errors == 2  # the timeouts; "status" is counted in non_2xx
    assert result.latency_ms["p99"] == pytest.approx(31.376)
    assert result.rate(result.accepted) == pytest.approx(12170 / 5.050767)


WRK_TEXT = """Running 10s test @ http://127.0.0.1:8080
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   407.12ms  200.10ms   4.30s    80.00%
  Latency Distribution
     50%  407.00ms
     75%  500.00ms
     90%  900.00ms
     99%    4.30s
  550 requests in 10.02s, 300.00KB read
  Socket errors: connect 0, read 1, write 0, timeout 12
  Non-2xx or 3xx responses: 20
Requests/sec:     54.89
"""


def test_parse_wrks_own_summary_when_the_script_printed_none() -> None:
    result = tools.parse_wrk(WRK_TEXT)
    assert result.requests == 550
    assert result.duration_s == pytest.approx(10.02)
    assert result.non_2xx == 20
    assert result.accepted == 530
    assert result.errors == {"connect": 0, "read": 1, "write": 0, "timeout": 12}
    assert result.latency_ms["p50"] == pytest.approx(407.0)
    assert result.latency_ms["p99"] == pytest.approx(4300.0)
    with pytest.raises(ValueError):
        tools.parse_wrk("wrk: command failed")


def test_table_and_verdicts() -> None:
    assert tools.verdict(0.25, 0.20, higher_is_better=True) == "ok"
    assert tools.verdict(70, 60, higher_is_better=False) == "MISS"
    assert tools.verdict(math.nan, 60, higher_is_better=False) == "MISS"
    table = tools.render_table([tools.Row("intake", "55 msg/s", "≥ 20%", "MISS")])
    lines = table.splitlines()
    assert lines[0].startswith("| figure") and "MISS" in lines[2]
    assert len({len(line) for line in lines}) == 1  # aligned columns
