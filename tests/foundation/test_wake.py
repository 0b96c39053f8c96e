"""The wake Lease's wire shape (written by the gateway, read by the operator) and the
timestamp formats it uses."""

from __future__ import annotations

import pytest

from llmstream import wake
from llmstream.timefmt import parse_rfc3339, rfc3339, rfc3339_micro


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01T00:01:40Z", 100.0),
        ("1970-01-01T00:01:40+00:00", 100.0),
        ("1970-01-01T00:01:40.250000Z", 100.25),
        ("1970-01-01T00:01:40", 100.0),
        ("soon", None),
        ("", None),
        (None, None),
        (100, None),
    ],
)
def test_parse_rfc3339(text: object, expected: float | None) -> None:
    assert parse_rfc3339(text) == expected


def test_formats_round_trip() -> None:
    assert rfc3339(100.75) == "1970-01-01T00:01:40Z"
    # MicroTime: the API server's parser wants exactly six fraction digits, even for .0
    assert rfc3339_micro(100.0) == "1970-01-01T00:01:40.000000Z"
    assert parse_rfc3339(rfc3339_micro(1_790_000_000.123456)) == pytest.approx(
        1_790_000_000.123456, abs=1e-6
    )


def test_the_gateway_patch_is_what_the_operator_reads() -> None:
    patch = wake.wake_patch("chat-gateway-5c8d-q", 1_790_000_000.5)
    lease = {"metadata": {"name": wake.lease_name("chat")}, **patch}
    assert lease["metadata"]["name"] == "chat-wake"
    assert wake.requested_at(lease) == 1_790_000_000.5
    assert wake.requested_by(lease) == "chat-gateway-5c8d-q"


@pytest.mark.parametrize(
    "lease",
    [{}, {"spec": None}, {"spec": {}}, {"spec": {"renewTime": "later"}}, {"spec": []}],
)
def test_a_lease_never_renewed_asks_for_nothing(lease: dict[str, object]) -> None:
    assert wake.requested_at(lease) is None
    assert wake.requested_by(lease) is None
