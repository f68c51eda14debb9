"""The text of a notification as a Telegram message in the HTML parse mode.

The core's ``title`` and ``text`` are plain text and may hold anything a user
named a machine or a rule (``<db&1>``), so every piece is cut to length first
and escaped afterwards: a cut never lands inside a tag or an ``&amp;``.
"""

from __future__ import annotations

import html

from lunasentri_core import Notification, NotificationKind

PARSE_MODE = "HTML"
MAX_LENGTH = 4096
"""Telegram's limit on a message's text after its entities are parsed."""
MAX_TITLE = 256
ELLIPSIS = "…"

_MARKS = {
    NotificationKind.MACHINE_OFFLINE: "🔴",
    NotificationKind.ALERT_FIRING: "🔴",
    NotificationKind.MACHINE_ONLINE: "🟢",
    NotificationKind.ALERT_RESOLVED: "🟢",
    NotificationKind.TEST: "🔔",
}


def length(text: str) -> int:
    """Length as Telegram counts it: UTF-16 code units (an emoji outside the BMP is 2)."""
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-16 units, ending in an ellipsis when cut."""
    if length(text) <= limit:
        return text
    budget = limit - length(ELLIPSIS)
    kept, used = [], 0
    for char in text:
        size = 2 if ord(char) > 0xFFFF else 1
        if used + size > budget:
            break
        kept.append(char)
        used += size
    return "".join(kept).rstrip() + ELLIPSIS


def compose(notification: Notification) -> str:
    """The message: a mark for the kind, the title in bold, then the text."""
    mark = _MARKS.get(notification.kind, "🔔")
    title = truncate(notification.title.strip(), MAX_TITLE) or str(notification.kind)
    head = f"{mark} {title}"
    body = truncate(notification.text.strip(), MAX_LENGTH - length(head) - 1)
    escaped_head = f"{mark} <b>{html.escape(title, quote=False)}</b>"
    if not body:
        return escaped_head
    return f"{escaped_head}\n{html.escape(body, quote=False)}"
