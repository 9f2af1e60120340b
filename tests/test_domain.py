"""The status mapping, the lifecycle payloads and the recovery context (SPEC §2, §3)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ibkr_recover import BrokerOrder, lifecycle_status
from ibkr_recover._domain import BadContext, format_rfc3339, lifecycle_payload, parse_context

# (IBKR status, submit, cancel, modify) for live; paper differs only on PendingCancel/PreCancelled.
LIVE_TABLE = [
    ("PendingSubmit", "open", "open", "open"),
    ("PreSubmitted", "open", "open", "open"),
    ("Submitted", "open", "open", "open"),
    ("WarnState", "open", "open", "open"),
    ("PendingCancel", "pending_cancel", "pending_cancel", "pending_cancel"),
    ("PreCancelled", "pending_cancel", "pending_cancel", "pending_cancel"),
    ("Filled", "filled", "filled", "filled"),
    ("Cancelled", "cancelled", "cancelled", "cancelled"),
    ("ApiCancelled", "cancelled", "cancelled", "cancelled"),
    ("Inactive", "refused", "refused", "refused"),
    ("SomethingNew", "submitted", "cancelled", "open"),
    ("", "submitted", "cancelled", "open"),
]


@pytest.mark.parametrize(("status", "submit", "cancel", "modify"), LIVE_TABLE)
def test_live_status_mapping(status: str, submit: str, cancel: str, modify: str) -> None:
    assert lifecycle_status(status, "submit", "live") == submit
    assert lifecycle_status(status, "cancel", "live") == cancel
    assert lifecycle_status(status, "modify", "live") == modify


@pytest.mark.parametrize(("status", "submit", "cancel", "modify"), LIVE_TABLE)
def test_paper_status_mapping_has_no_pending_cancel(
    status: str, submit: str, cancel: str, modify: str
) -> None:
    def paper(expected: str) -> str:
        return "open" if expected == "pending_cancel" else expected

    assert lifecycle_status(status, "submit", "paper") == paper(submit)
    assert lifecycle_status(status, "cancel", "paper") == paper(cancel)
    assert lifecycle_status(status, "modify", "paper") == paper(modify)


def test_status_mapping_tolerates_case_and_separators() -> None:
    assert lifecycle_status("pre_submitted", "submit", "live") == "open"
    assert lifecycle_status("FILLED", "cancel", "paper") == "filled"
    assert lifecycle_status("Pending Cancel", "modify", "live") == "pending_cancel"


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2026, 5, 14, 0, 1, 0, tzinfo=UTC), "2026-05-14T00:01:00Z"),
        (datetime(2026, 5, 14, 0, 1, 0, 500000, tzinfo=UTC), "2026-05-14T00:01:00.5Z"),
        (datetime(2026, 5, 14, 0, 1, 0, 123400, tzinfo=UTC), "2026-05-14T00:01:00.1234Z"),
        (datetime(2026, 5, 14, 0, 1, 0, 1, tzinfo=UTC), "2026-05-14T00:01:00.000001Z"),
    ],
)
def test_rfc3339_trims_fraction(moment: datetime, text: str) -> None:
    assert format_rfc3339(moment) == text


_OFFSETS = st.one_of(
    st.none(),
    st.just(UTC),
    st.integers(-23 * 60, 23 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes))),
)


@given(
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=_OFFSETS)
)
def test_rfc3339_is_the_utc_isoformat_with_z(moment: datetime) -> None:
    utc = moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
    expected = utc.isoformat()
    if "." in expected:
        expected = expected.rstrip("0")
    assert format_rfc3339(moment) == expected + "Z"


def test_live_payload_is_sorted_compact_and_hashed() -> None:
    order = BrokerOrder("U1234567", "broker-123", "Submitted", datetime(2026, 5, 14, tzinfo=UTC))
    payload, digest, status = lifecycle_payload(order, "submit", "live", datetime.now(UTC))
    assert payload == (
        '{"account_id":"U1234567","broker_order_id":"broker-123",'
        '"execution_correlation":null,"status":"open","updated_at":"2026-05-14T00:00:00Z"}'
    )
    assert digest == hashlib.sha256(payload.encode()).hexdigest()
    assert status == "open"


def test_paper_payload_uses_run_time_without_broker_time() -> None:
    order = BrokerOrder("DU1234567", "77", "Filled")
    run_time = datetime(2026, 12, 1, 7, 0, 0, 250000, tzinfo=UTC)
    payload, digest, _ = lifecycle_payload(order, "cancel", "paper", run_time)
    assert payload == (
        '{"account_id":"DU1234567","broker_order_id":"77","status":"filled",'
        '"updated_at":"2026-12-01T07:00:00.25Z"}'
    )
    assert digest == hashlib.sha256(payload.encode()).hexdigest()


def test_payload_keeps_non_ascii_unescaped() -> None:
    order = BrokerOrder("DU1234567", "ordré", "Filled")
    payload, digest, _ = lifecycle_payload(order, "submit", "paper", datetime.now(UTC))
    assert '"ordré"' in payload
    assert digest == hashlib.sha256(payload.encode("utf-8")).hexdigest()


@pytest.mark.parametrize("text", ["", "  ", "{}", None])
def test_empty_context_is_no_context(text: str | None) -> None:
    assert parse_context(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "[]",
        '{"workflow":"paper"}',
        '{"workflow":"demo","operation":"submit","account_id":"DU1"}',
        '{"workflow":"paper","operation":"close","account_id":"DU1"}',
        '{"workflow":"paper","operation":"submit","account_id":" "}',
        '{"workflow":"paper","operation":"submit","account_id":7}',
    ],
)
def test_malformed_context_is_rejected(text: str) -> None:
    with pytest.raises(BadContext):
        parse_context(text)


def test_context_with_broker_order_id() -> None:
    ctx = parse_context(
        '{"workflow":"live","operation":"cancel","account_id":"U1","broker_order_id":"42"}'
    )
    assert ctx is not None
    assert (ctx.workflow, ctx.operation, ctx.account_id, ctx.broker_order_id) == (
        "live",
        "cancel",
        "U1",
        "42",
    )
