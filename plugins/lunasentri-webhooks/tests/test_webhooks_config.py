"""Channel configs and settings, decoded the way the core decodes them."""

from __future__ import annotations

import base64
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from lunasentri_core import Settings, ValidationError
from lunasentri_core.codec import decode, encode
from lunasentri_core.plugins import ComponentKind, create_plugin_manager
from lunasentri_webhooks import WebhookChannel, WebhookSettings, secret_key

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


def channel(**config: Any) -> WebhookChannel:
    return decode({"url": "https://hooks.example.com/in", **config}, WebhookChannel, what="config")


def test_a_channel_without_a_secret_gets_a_new_one() -> None:
    first, second = channel(), channel()
    assert first.secret.startswith("whsec_")
    assert len(secret_key(first.secret)) == 32
    assert first.secret != second.secret


def test_the_stored_form_round_trips() -> None:
    config = channel(secret=SECRET, headers={"Authorization": "Bearer x"})
    stored = encode(config)
    assert stored == {
        "url": "https://hooks.example.com/in",
        "secret": SECRET,
        "headers": {"Authorization": "Bearer x"},
    }
    assert decode(stored, WebhookChannel) == config


def test_the_secret_fields_are_marked() -> None:
    marked = {f.name for f in attrs.fields(WebhookChannel) if f.metadata.get("secret")}
    assert marked == {"secret", "headers"}


def test_the_url_is_marked_as_where_the_secrets_go() -> None:
    # The core then refuses to keep a masked secret or headers for a new URL.
    marked = {f.name for f in attrs.fields(WebhookChannel) if f.metadata.get("destination")}
    assert marked == {"url"}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://hooks.example.com/in", "url must be an http:// or https:// URL, not 'ftp' one"),
        ("hooks.example.com/in", "url must be an http:// or https:// URL"),
        ("https:///in", "url has no host"),
        ("https://user:pw@hooks.example.com/", "url must not hold credentials"),
        ("https://hooks.example.com/a b", "url must not contain spaces"),
        ("https://hooks.example.com/\x00", "url must not contain spaces or control characters"),
        ("https://hooks.example.com:99999/", "url has an invalid port 99999"),
        ("https://hooks.example.com:x/", "url is not a valid URL"),
        ("https://example.com/" + "x" * 2048, "url is longer than 2048 characters"),
    ],
)
def test_a_bad_url_is_refused_with_the_field_named(url: str, message: str) -> None:
    # The error names the field (url:), then the validator's own message.
    with pytest.raises(ValidationError, match="invalid config: url: " + re.escape(message)):
        channel(url=url)


def test_a_url_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(ValidationError, match="url: expected a string"):
        channel(url=42)


def test_the_url_is_required() -> None:
    with pytest.raises(ValidationError, match="url: required field is missing"):
        decode({}, WebhookChannel, what="config")


@pytest.mark.parametrize(
    "secret",
    [
        SECRET.removeprefix("whsec_"),  # accepted by sign(), but the config keeps one form
        "whsec_" + base64.b64encode(bytes(23)).decode(),
        "whsec_" + base64.b64encode(bytes(65)).decode(),
        "whsec_not*base64*at*all",
        "",
    ],
)
def test_a_secret_not_in_whsec_form_is_refused_without_quoting_it(secret: str) -> None:
    with pytest.raises(ValidationError, match="secret must be 'whsec_' followed by") as caught:
        channel(secret=secret)
    if secret:
        assert secret not in str(caught.value)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"Webhook-Signature": "v1,x"}, "'Webhook-Signature' is set by the notifier"),
        ({"webhook-id": "x"}, "'webhook-id' is set by the notifier"),
        ({"Content-Type": "text/plain"}, "'Content-Type' is set by the notifier"),
        ({"Host": "elsewhere"}, "'Host' is set by the notifier"),
        ({"X Bad": "1"}, "'X Bad' is not a valid header name"),
        ({"X-Token": "a\r\nX-Injected: 1"}, "the value of 'X-Token' has a line break"),
    ],
)
def test_bad_extra_headers_are_refused(headers: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match="headers: " + message):
        channel(headers=headers)


def test_header_values_must_be_strings() -> None:
    with pytest.raises(ValidationError, match=r"headers\.X-Retries: expected a string"):
        channel(headers={"X-Retries": 3})


def test_unknown_channel_keys_are_refused() -> None:
    with pytest.raises(ValidationError, match="method: unknown field"):
        channel(method="PUT")


# ------------------------------------------------------------------ settings


def test_settings_from_an_empty_table_have_safe_defaults() -> None:
    settings = decode({}, WebhookSettings)
    assert settings == WebhookSettings()
    assert settings.timeout == timedelta(seconds=10)
    assert settings.allow_private_addresses is False
    assert settings.ca_bundle is None


def test_settings_are_read_from_toml_values(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    settings = decode(
        {"timeout": "30s", "allow_private_addresses": True, "ca_bundle": str(bundle)},
        WebhookSettings,
    )
    assert settings == WebhookSettings(timedelta(seconds=30), True, bundle)
    assert decode({"timeout": 2.5}, WebhookSettings).timeout == timedelta(seconds=2.5)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"timeout": 0}, "timeout must be positive"),
        ({"timeout": "soon"}, "timeout: expected a duration"),
        ({"allow_private_addresses": "yes"}, "allow_private_addresses: expected a boolean"),
        ({"ca_bundle": "/nonexistent/ca.pem"}, "ca_bundle: no such file '/nonexistent/ca.pem'"),
        ({"max_redirects": 3}, "max_redirects: unknown field"),
    ],
)
def test_bad_settings_name_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        decode(table, WebhookSettings, what="settings [plugins.webhook]")


def test_settings_come_from_the_plugins_webhook_table() -> None:
    settings = Settings.load(environ={}, plugins={"webhook": {"allow_private_addresses": True}})
    component = create_plugin_manager(settings).component(ComponentKind.NOTIFIER, "webhook")
    assert component.settings == WebhookSettings(allow_private_addresses=True)
