"""LunaSentri notifier for webhooks signed per Standard Webhooks.

Registered through the ``lunasentri`` entry point as the notifier ``webhook``:
each notification is POSTed as JSON to the channel's URL with the
``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers.
Receivers check those with :func:`verify`; :func:`sign` and
:func:`generate_secret` are the sending side of the same scheme. Settings come
from ``[plugins.webhook]`` (:class:`WebhookSettings`); a channel's config is a
:class:`WebhookChannel`.
"""

from __future__ import annotations

from collections.abc import Iterable

from lunasentri_core import Notifier, hookimpl
from lunasentri_webhooks.config import WebhookChannel, WebhookSettings
from lunasentri_webhooks.notifier import VERSION as __version__
from lunasentri_webhooks.notifier import WebhookNotifier
from lunasentri_webhooks.signing import (
    WebhookVerificationError,
    generate_secret,
    secret_key,
    sign,
    verify,
)

__all__ = [
    "WebhookChannel",
    "WebhookNotifier",
    "WebhookSettings",
    "WebhookVerificationError",
    "__version__",
    "generate_secret",
    "lunasentri_register_notifiers",
    "secret_key",
    "sign",
    "verify",
]


@hookimpl
def lunasentri_register_notifiers() -> Iterable[type[Notifier]]:
    return [WebhookNotifier]
