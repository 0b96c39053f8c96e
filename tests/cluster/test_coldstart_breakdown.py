"""The e2e cold-start breakdown's pure parts: rows in step order, log timestamps."""

from __future__ import annotations

from e2e.coldstart import breakdown, log_steps, parse_time


def test_rows_follow_the_step_order_with_deltas_and_skip_steps_not_seen() -> None:
    rows = breakdown({"request": 100.0, "first_token": 110.5, "ready": 110.0, "pod_scheduled": 101})
    assert [r["step"] for r in rows] == ["request", "pod_scheduled", "ready", "first_token"]
    assert [r["since_request_s"] for r in rows] == [0.0, 1.0, 10.0, 10.5]
    assert [r["since_previous_s"] for r in rows] == [0.0, 1.0, 9.0, 0.5]


def test_server_log_lines_give_their_nanosecond_timestamps() -> None:
    log = (
        "2026-11-27T15:00:01.123456789Z INFO starting\n"
        "2026-11-27T15:00:03.500000000Z INFO model smollm2 loaded in 1.90 s\n"
        "2026-11-27T15:00:04.250000001Z INFO ready to serve\n"
    )
    steps = log_steps(log)
    assert steps["model_loaded"] == parse_time("2026-11-27T15:00:03.500000Z")
    assert steps["server_ready"] - steps["model_loaded"] == 0.75
