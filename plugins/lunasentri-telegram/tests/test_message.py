"""Messages in Telegram's HTML mode: hostile names escaped, length kept, entities whole."""

from __future__ import annotations

import anyio
from botapi_server import MAX_TEXT, PRIVATE, BotApiServer, parse_html, utf16_length
from hypothesis import given
from hypothesis import strategies as st
from support import FakeClock, channel_config, settled_notifier

from lunasentri_core import DeliveryStatus, NotificationKind
from lunasentri_core.testing import make_notification
from lunasentri_telegram.message import ELLIPSIS, MAX_TITLE, compose, length, truncate

HOSTILE_NAME = "<db&1>"
HOSTILE_TEXT = (
    'Machine <db&1> "prod" is offline since 12:00.\n'
    "<script>alert(1)</script> &amp; &lt;b&gt; <b>not bold</b> </b> <a href=x>x</a> a < b > c"
)


def test_title_is_bold_and_everything_from_the_core_is_escaped() -> None:
    notification = make_notification(
        kind=NotificationKind.MACHINE_OFFLINE, title=f"{HOSTILE_NAME} is offline", text=HOSTILE_TEXT
    )
    message = compose(notification)
    assert message.startswith("🔴 <b>&lt;db&amp;1&gt; is offline</b>\n")
    parsed = parse_html(message)
    assert parsed.text == f"🔴 {HOSTILE_NAME} is offline\n{HOSTILE_TEXT}"
    # The only entity is the title: nothing in the text became markup.
    assert parsed.entities == (
        {"type": "bold", "offset": len("🔴 ") + 1, "length": len(f"{HOSTILE_NAME} is offline")},
    )


def test_each_kind_has_its_mark() -> None:
    marks = {
        kind: compose(make_notification(kind=kind, title="t", text="x"))[:1]
        for kind in NotificationKind
    }
    assert marks[NotificationKind.MACHINE_OFFLINE] == marks[NotificationKind.ALERT_FIRING] == "🔴"
    assert marks[NotificationKind.MACHINE_ONLINE] == marks[NotificationKind.ALERT_RESOLVED] == "🟢"
    assert marks[NotificationKind.TEST] == "🔔"


def test_an_empty_text_sends_the_title_alone() -> None:
    message = compose(make_notification(title="Disk full", text="   "))
    assert message == "🔔 <b>Disk full</b>"


def test_a_long_text_is_cut_before_escaping_so_no_entity_is_split() -> None:
    text = "&<>" * 5000
    message = compose(make_notification(title="t", text=text))
    parsed = parse_html(message)
    assert utf16_length(parsed.text) <= MAX_TEXT
    assert parsed.text.endswith(ELLIPSIS)
    body = parsed.text.split("\n", 1)[1]
    assert text.startswith(body.removesuffix(ELLIPSIS))


def test_length_counts_utf16_units_like_telegram() -> None:
    assert length("a€") == 2
    assert length("😀") == 2
    # 3000 astral characters are 6000 units: they must be cut to fit.
    message = compose(make_notification(title="t", text="😀" * 3000))
    assert utf16_length(parse_html(message).text) <= MAX_TEXT


def test_truncate_never_splits_a_character_and_ends_with_an_ellipsis() -> None:
    assert truncate("short", 10) == "short"
    assert truncate("😀😀😀", 4) == "😀…"
    assert truncate("abcdef", 4) == "abc…"


def test_a_long_title_is_cut_too() -> None:
    message = compose(make_notification(title="x" * 1000, text="body"))
    title = parse_html(message).text.split("\n")[0]
    assert title == "🔔 " + "x" * (MAX_TITLE - 1) + ELLIPSIS


@given(title=st.text(min_size=1, max_size=300), text=st.text(max_size=6000))
def test_any_title_and_text_parse_back_as_sent(title: str, text: str) -> None:
    notification = make_notification(title=title, text=text)
    parsed = parse_html(compose(notification))
    assert utf16_length(parsed.text) <= MAX_TEXT
    assert [entity["type"] for entity in parsed.entities] == ["bold"]
    if length(title.strip()) > MAX_TITLE:
        return
    head = f"🔔 {title.strip() or notification.kind}"
    assert parsed.text.startswith(head)
    body, full = parsed.text[len(head) :], text.strip()
    if length(head) + 1 + length(full) > MAX_TEXT:
        assert body.endswith(ELLIPSIS)
        assert full.startswith(body[1:-1].rstrip())
    else:
        assert body == (f"\n{full}" if full else "")


def test_hostile_names_arrive_as_plain_text(bot_api: BotApiServer, clock: FakeClock) -> None:
    notifier = settled_notifier(bot_api, clock)
    notification = make_notification(title=f"{HOSTILE_NAME} is offline", text=HOSTILE_TEXT)
    result = anyio.run(notifier.send, channel_config(PRIVATE), notification)
    assert result.status is DeliveryStatus.DELIVERED, result
    (sent,) = bot_api.messages(PRIVATE)
    assert sent.text == f"🔔 {HOSTILE_NAME} is offline\n{HOSTILE_TEXT}"
    assert [entity["type"] for entity in sent.entities] == ["bold"]
    assert sent.parameters["parse_mode"] == "HTML"


def test_a_message_at_the_limit_is_accepted(bot_api: BotApiServer, clock: FakeClock) -> None:
    notifier = settled_notifier(bot_api, clock)
    notification = make_notification(title="Big", text="<&>😀" * 3000)
    result = anyio.run(notifier.send, channel_config(PRIVATE), notification)
    assert result.status is DeliveryStatus.DELIVERED, result
    (sent,) = bot_api.messages(PRIVATE)
    assert MAX_TEXT - 2 <= utf16_length(sent.text) <= MAX_TEXT
