"""What a receiver gets and when, as values: the body's fields and bytes, Slack's text, the signature, the
backoff between attempts (no servers needed)."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import uuid
from datetime import UTC, datetime

from models import webhook
from resources import events
from scheduler import webhook_body, webhook_delivery
from scheduler.webhooks import Dispatcher
from setpoint.settings import Settings

EVENT = {
    "id": 42,
    "at": datetime(2026, 12, 2, 1, 2, 3, 456789, tzinfo=UTC),
    "kind": "File",
    "name": "motd",
    "uid": uuid.UUID("5b0c3a5e-0000-4000-8000-000000000001"),
    "generation": 3,
    "type": "DriftCorrected",
    "reason": "Applied",
    "message": "drift corrected: write 8 bytes to /etc/motd",
    "details": {"drift": [{"change": "write 8 bytes to /etc/motd"}]},
}


def test_the_body_is_the_documented_json_with_a_slack_text() -> None:
    assert json.loads(webhook_body.render(EVENT)) == {
        "id": 42,
        "at": "2026-12-02T01:02:03.456789+00:00",
        "kind": "File",
        "name": "motd",
        "uid": "5b0c3a5e-0000-4000-8000-000000000001",
        "generation": 3,
        "type": "DriftCorrected",
        "reason": "Applied",
        "message": "drift corrected: write 8 bytes to /etc/motd",
        "details": {"drift": [{"change": "write 8 bytes to /etc/motd"}]},
        "text": "File/motd DriftCorrected (Applied): drift corrected: write 8 bytes to /etc/motd",
    }


def test_a_chat_body_is_the_text_alone_as_slack_and_mattermost_accept_it() -> None:
    assert json.loads(webhook_body.render(EVENT, "chat")) == {
        "text": "File/motd DriftCorrected (Applied): drift corrected: write 8 bytes to /etc/motd"
    }
    assert "type" not in json.loads(webhook_body.render(EVENT, "chat")), "Mattermost refuses a type not custom_*"


def test_the_same_event_renders_the_same_bytes_at_every_attempt() -> None:
    assert webhook_body.render(EVENT) == webhook_body.render(dict(EVENT))


def test_the_text_escapes_what_slack_reads_as_markup_and_omits_what_is_missing() -> None:
    event: dict[str, object] = {**EVENT, "reason": None, "message": "<!channel> a & b"}
    assert webhook_body.text_of(event) == "File/motd DriftCorrected: &lt;!channel&gt; a &amp; b"
    assert webhook_body.text_of({**EVENT, "reason": None, "message": None}) == "File/motd DriftCorrected"


def test_the_signature_is_the_hmac_sha256_of_the_timestamp_a_dot_and_the_exact_body() -> None:
    body = webhook_body.render(EVENT)
    headers = webhook_body.headers(42, "ops", body, "s3cret", 1764637323)
    expected = hmac.new(b"s3cret", b"1764637323." + body, hashlib.sha256).hexdigest()
    assert headers["X-Setpoint-Signature"] == f"sha256={expected}"
    assert headers["X-Setpoint-Timestamp"] == "1764637323"
    assert headers["X-Setpoint-Event-Id"] == "42" and headers["X-Setpoint-Webhook"] == "ops"
    assert headers["Content-Type"] == "application/json"
    assert "s3cret" not in json.dumps(headers) and b"s3cret" not in body


class Fixed(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def test_retries_back_off_doubling_to_the_cap_with_up_to_half_of_each_delay_jittered_away() -> None:
    settings = Settings(webhook_backoff_base_seconds=1, webhook_backoff_max_seconds=60, scheduler_metrics_port=None)
    longest, shortest = Dispatcher(settings, rng=Fixed(0.999999)), Dispatcher(settings, rng=Fixed(0.0))
    try:
        assert [round(longest.courier.backoff_s(n)) for n in (1, 2, 3, 4, 5, 6, 7, 8)] == [1, 2, 4, 8, 16, 32, 60, 60]
        assert [shortest.courier.backoff_s(n) for n in (1, 2, 7)] == [0.5, 1.0, 30.0]
        assert round(longest.courier.backoff_s(100_000)) == 60, "a week of retries does not overflow"
    finally:
        for dispatcher in (longest, shortest):
            dispatcher.stop()


NOW = datetime(2026, 12, 2, 1, 0, 0, tzinfo=UTC)


def test_retry_after_is_read_as_seconds_or_an_http_date_and_bounded() -> None:
    assert webhook_delivery.retry_after_s("7", NOW) == 7.0
    assert webhook_delivery.retry_after_s("Wed, 02 Dec 2026 01:00:30 GMT", NOW) == 30.0
    assert webhook_delivery.retry_after_s("Wed, 02 Dec 2026 00:00:00 GMT", NOW) == 0.0, "in the past: at once"
    assert webhook_delivery.retry_after_s("86400", NOW) == webhook_delivery.MAX_RETRY_AFTER_S
    assert webhook_delivery.retry_after_s("soon", NOW) is None
    assert webhook_delivery.retry_after_s(None, NOW) is None


def test_a_client_error_but_408_425_429_is_not_worth_retrying() -> None:
    permanent = {status for status in range(100, 600) if webhook_delivery.Answer(status, "x").permanent}
    assert permanent == set(range(400, 500)) - {408, 425, 429}
    assert not webhook_delivery.Answer(None, "no answer").permanent


def test_the_event_types_a_webhook_takes_are_the_event_types() -> None:
    assert set(webhook.EVENT_TYPES) == set(events.TYPES)
    assert webhook.FORMATS == webhook_body.FORMATS
