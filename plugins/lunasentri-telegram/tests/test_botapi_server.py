"""The Bot API stand-in answers as Telegram does, so the plugin's tests mean something."""

from __future__ import annotations

import httpx
import pytest
from botapi_server import PRIVATE, TOKEN, BotApiServer, EntityError, parse_html


def post(bot_api: BotApiServer, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{bot_api.url}{path}", timeout=10, **kwargs)  # type: ignore[arg-type]


def test_a_form_body_is_accepted_and_answered_with_a_message(bot_api: BotApiServer) -> None:
    response = post(
        bot_api,
        f"/bot{TOKEN}/sendMessage",
        data={
            "chat_id": str(PRIVATE),
            "text": "<b>bold</b> &amp; plain",
            "parse_mode": "HTML",
            "link_preview_options": '{"is_disabled": true}',
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True
    message = body["result"]
    assert message["text"] == "bold & plain"
    assert message["entities"] == [{"type": "bold", "offset": 0, "length": 4}]
    assert message["chat"] == {"id": PRIVATE, "type": "private", "first_name": "Ops"}
    assert bot_api.messages(PRIVATE)[0].content_type == "application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    ("path", "status", "description"),
    [
        (f"/bot{TOKEN}/getUpdatesX", 404, "Not Found"),
        ("/botnot-a-token/sendMessage", 404, "Not Found"),
        ("/bot123456:AAE-not-a-known-bot-0123456789/sendMessage", 401, "Unauthorized"),
    ],
)
def test_unknown_methods_and_tokens(
    bot_api: BotApiServer, path: str, status: int, description: str
) -> None:
    response = post(bot_api, path, json={"chat_id": PRIVATE, "text": "x"})
    assert response.status_code == status
    assert response.json() == {"ok": False, "error_code": status, "description": description}


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("<db&1> is down", 'Unsupported start tag "db&1" at byte offset 0'),
        ("<b>open", 'Can\'t find end tag corresponding to start tag "b"'),
        ("<b>x</i>", "Unexpected end tag at byte offset 4"),
        ("é <script>x</script>", 'Unsupported start tag "script" at byte offset 3'),
        ("a & b", "Character '&' is reserved and must be escaped at byte offset 2"),
        ("a > b", "Character '>' is reserved and must be escaped at byte offset 2"),
        ("&nbsp;", 'Unsupported HTML entity "&nbsp;" at byte offset 0'),
        ("<code><b>x</b></code>", 'Unsupported tag "b" inside "code" at byte offset 6'),
        ('<span class="x">x</span>', 'Unsupported start tag "span" at byte offset 0'),
    ],
)
def test_html_is_parsed_as_strictly_as_telegram(source: str, error: str) -> None:
    with pytest.raises(EntityError) as raised:
        parse_html(source)
    assert str(raised.value) == error


def test_html_entities_and_nesting_telegram_supports() -> None:
    parsed = parse_html('<b>a <i>b</i></b> &lt;&#39;&#x27;&quot;&gt; <a href="https://x">l</a>')
    assert parsed.text == "a b <''\"> l"
    assert [e["type"] for e in parsed.entities] == ["bold", "italic", "text_link"]


def test_entity_errors_are_bad_requests(bot_api: BotApiServer) -> None:
    response = post(
        bot_api,
        f"/bot{TOKEN}/sendMessage",
        json={"chat_id": PRIVATE, "text": "<db&1>", "parse_mode": "HTML"},
    )
    assert response.status_code == 400
    assert response.json()["description"] == (
        'Bad Request: can\'t parse entities: Unsupported start tag "db&1" at byte offset 0'
    )
    assert not bot_api.sent


def test_too_long_and_empty_texts_are_refused(bot_api: BotApiServer) -> None:
    too_long = post(
        bot_api, f"/bot{TOKEN}/sendMessage", json={"chat_id": PRIVATE, "text": "x" * 4097}
    )
    empty = post(bot_api, f"/bot{TOKEN}/sendMessage", json={"chat_id": PRIVATE, "text": " "})
    assert too_long.json()["description"] == "Bad Request: message is too long"
    assert empty.json()["description"] == "Bad Request: message text is empty"


def test_messages_are_stamped_on_the_servers_clock(bot_api: BotApiServer) -> None:
    bot_api.clock = lambda: 1234.5
    response = post(bot_api, f"/bot{TOKEN}/sendMessage", json={"chat_id": PRIVATE, "text": "x"})
    assert response.status_code == 200
    assert bot_api.send_times(PRIVATE) == [1234.5]
