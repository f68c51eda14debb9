"""What a receiver's answer means for the delivery.

Following the Standard Webhooks recommendations: 2xx is delivered; a redirect is
not followed (the channel's URL should be updated instead); 410 Gone means the
receiver wants no more webhooks, so the channel is disabled; 429 and 5xx are
temporary, retried after ``Retry-After`` when the receiver gives one; any other
status fails this delivery.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime

from lunasentri_core import DeliveryResult, DeliveryStatus

MAX_RETRY_AFTER = 86400.0
"""A receiver asking for a longer pause than a day is retried after a day."""


def classify(
    status: int,
    *,
    host: str,
    retry_after: str | None = None,
    location: str | None = None,
    excerpt: str = "",
    now: datetime | None = None,
) -> DeliveryResult:
    """The result of an HTTP answer ``status`` from ``host``.

    :param retry_after: The ``Retry-After`` header, if any.
    :param location: The ``Location`` header of a redirect, if any.
    :param excerpt: The start of the response body, quoted in failure details.
    """
    said = f"HTTP {status} from {host}"
    if 200 <= status < 300:
        return DeliveryResult(DeliveryStatus.DELIVERED, said)
    if 300 <= status < 400:
        target = f" to {location[:200]}" if location else ""
        return DeliveryResult(
            DeliveryStatus.FAILED,
            f"{said}: redirect{target} refused (redirects are not followed; "
            "set the channel's URL to the final address)",
        )
    if status == 410:
        return DeliveryResult(
            DeliveryStatus.DISABLE_CHANNEL,
            f"{said}: the receiver is gone for good{_quoted(excerpt)}",
        )
    if status == 429 or 500 <= status < 600:
        delay = parse_retry_after(retry_after, now or datetime.now(UTC))
        when = f", retry after {delay:g} s" if delay is not None else ""
        return DeliveryResult(DeliveryStatus.RETRY, f"{said}{when}{_quoted(excerpt)}", delay)
    return DeliveryResult(DeliveryStatus.FAILED, f"{said}{_quoted(excerpt)}")


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (seconds or an HTTP date), capped."""
    if value is None or not (value := value.strip()):
        return None
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - now).total_seconds()), MAX_RETRY_AFTER)


def _quoted(excerpt: str) -> str:
    text = " ".join(excerpt.split())
    return f": {text!r}" if text else ""
