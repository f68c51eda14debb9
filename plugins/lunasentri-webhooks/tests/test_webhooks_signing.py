"""sign() and verify(): the Standard Webhooks test vectors, round trips, every failure."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lunasentri_webhooks import WebhookVerificationError, generate_secret, secret_key, sign, verify

# The vector every reference library of the standard-webhooks project tests its
# sign() with (libraries/{python,go,javascript}/...: "sign function works").
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = '{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
# A signature those libraries' tests use as a wrong one.
WRONG_SIGNATURE = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="

# More vectors, computed with the reference Python library (standardwebhooks 1.1.0,
# Webhook(secret).sign(...)): a 64-byte key with a non-ASCII body, an empty body.
REFERENCE_VECTORS = [
    (
        "whsec_" + base64.b64encode(bytes(range(64))).decode(),
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
        1674087231,
        '{"type":"machine.offline","title":"db-1 — hors ligne ✓"}',
        "v1,ijP/Pu30qDSEaa1/iQxT/YpwwJTnrQKRLW51wesYaxI=",
    ),
    (
        "whsec_ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM=",
        "01JD5Z0000000000000000TEST",
        1700000000,
        "",
        "v1,MzgIbsJxzOBSHq4O69rOwPSDcu8k6m3LHTSVnEezt8U=",
    ),
]


def spec_headers(signature: str = SPEC_SIGNATURE) -> dict[str, str]:
    return {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TIMESTAMP),
        "webhook-signature": signature,
    }


def verify_spec(headers: dict[str, str], body: bytes | str = SPEC_BODY, **kwargs: int) -> None:
    kwargs.setdefault("now", SPEC_TIMESTAMP)
    verify(SPEC_SECRET, headers, body, **kwargs)


# ------------------------------------------------------------------ vectors


@pytest.mark.parametrize("secret", [SPEC_SECRET, SPEC_SECRET.removeprefix("whsec_")])
def test_sign_matches_the_spec_vector(secret: str) -> None:
    assert sign(secret, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == spec_headers()


def test_sign_takes_bytes_and_text_alike() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY.encode()) == spec_headers()


@pytest.mark.parametrize(("secret", "msg_id", "timestamp", "body", "signature"), REFERENCE_VECTORS)
def test_sign_matches_the_reference_library(
    secret: str, msg_id: str, timestamp: int, body: str, signature: str
) -> None:
    headers = sign(secret, msg_id, timestamp, body)
    assert headers["webhook-signature"] == signature
    verify(secret, headers, body.encode("utf-8"), now=timestamp)


@pytest.mark.parametrize("secret", [SPEC_SECRET, SPEC_SECRET.removeprefix("whsec_")])
def test_verify_accepts_the_spec_vector(secret: str) -> None:
    verify(secret, spec_headers(), SPEC_BODY, now=SPEC_TIMESTAMP)


def test_a_secret_without_padding_is_accepted() -> None:
    padded = "whsec_" + base64.b64encode(bytes(range(25))).decode()
    assert padded.endswith("=")
    assert secret_key(padded.rstrip("=")) == secret_key(padded) == bytes(range(25))


def test_header_names_are_case_insensitive() -> None:
    verify_spec({name.title(): value for name, value in spec_headers().items()})
    verify_spec({name.upper(): value for name, value in spec_headers().items()})


def test_one_matching_signature_among_several_is_enough() -> None:
    # Key rotation: the old and the new key's signatures side by side, and a future version.
    rotated = " ".join(
        [WRONG_SIGNATURE, "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=", SPEC_SIGNATURE]
    )
    verify_spec(spec_headers(rotated))


def test_unknown_versions_are_ignored_not_matched() -> None:
    only_v1a = "v1a," + SPEC_SIGNATURE.removeprefix("v1,")
    with pytest.raises(
        WebhookVerificationError, match=r"has no v1 signature \(versions found: v1a\)"
    ):
        verify_spec(spec_headers(only_v1a))


# ------------------------------------------------------------------ round trips


@given(
    key=st.binary(min_size=24, max_size=64),
    msg_id=st.text(
        st.characters(codec="ascii", exclude_characters=". \t\r\n\x0b\x0c"),
        min_size=1,
        max_size=40,
    ).filter(lambda text: text == text.strip()),
    timestamp=st.integers(min_value=0, max_value=10**12 - 1),
    body=st.binary(max_size=512),
)
def test_verify_accepts_what_sign_made(
    key: bytes, msg_id: str, timestamp: int, body: bytes
) -> None:
    secret = "whsec_" + base64.b64encode(key).decode()
    headers = sign(secret, msg_id, timestamp, body)
    verify(secret, headers, body, now=timestamp)
    with pytest.raises(WebhookVerificationError, match="no v1 signature matches"):
        verify(secret, headers, body + b" ", now=timestamp)


@given(st.integers(min_value=24, max_value=64))
def test_generated_secrets_have_the_whsec_form(nbytes: int) -> None:
    secret = generate_secret(nbytes)
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == nbytes


def test_generated_secrets_differ() -> None:
    assert len({generate_secret() for _ in range(20)}) == 20
    assert len(secret_key(generate_secret())) == 32


@pytest.mark.parametrize("nbytes", [0, 23, 65])
def test_a_secret_size_outside_the_standard_is_refused(nbytes: int) -> None:
    with pytest.raises(ValueError, match="24 to 64 bytes"):
        generate_secret(nbytes)


# ------------------------------------------------------------------ verify: failures


def test_a_changed_body_fails() -> None:
    with pytest.raises(WebhookVerificationError, match="no v1 signature matches"):
        verify_spec(spec_headers(), SPEC_BODY.replace("2432232314", "2432232315"))


def test_a_wrong_signature_fails() -> None:
    with pytest.raises(WebhookVerificationError, match=r"no v1 signature matches \(checked 1\)"):
        verify_spec(spec_headers(WRONG_SIGNATURE))


def test_the_wrong_secret_fails() -> None:
    with pytest.raises(WebhookVerificationError, match="wrong secret, or the body was changed"):
        verify(generate_secret(), spec_headers(), SPEC_BODY, now=SPEC_TIMESTAMP)


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (-301, "is 301 s old, outside the tolerance of 300 s"),
        (301, "is 301 s in the future, outside the tolerance of 300 s"),
    ],
)
def test_a_timestamp_outside_the_tolerance_fails(offset: int, message: str) -> None:
    with pytest.raises(WebhookVerificationError, match=message):
        verify_spec(spec_headers(), now=SPEC_TIMESTAMP - offset)


def test_the_tolerance_is_inclusive_and_adjustable() -> None:
    verify_spec(spec_headers(), now=SPEC_TIMESTAMP + 300)
    verify_spec(spec_headers(), now=SPEC_TIMESTAMP - 300)
    verify_spec(spec_headers(), now=SPEC_TIMESTAMP + 3600, tolerance=3600)
    with pytest.raises(WebhookVerificationError, match="tolerance of 10 s"):
        verify_spec(spec_headers(), now=SPEC_TIMESTAMP + 11, tolerance=10)


def test_verify_uses_the_clock_by_default() -> None:
    with pytest.raises(WebhookVerificationError, match="s old"):
        verify(SPEC_SECRET, spec_headers(), SPEC_BODY)


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_fails(name: str) -> None:
    headers = spec_headers()
    del headers[name]
    with pytest.raises(WebhookVerificationError, match=f"missing header {name}"):
        verify_spec(headers)
    with pytest.raises(WebhookVerificationError, match=f"missing header {name}"):
        verify_spec({**headers, name: "  "})


@pytest.mark.parametrize("timestamp", ["hello", "1614265330.5", "-1614265330", "1e9"])
def test_a_malformed_timestamp_fails(timestamp: str) -> None:
    headers = {**spec_headers(), "webhook-timestamp": timestamp}
    with pytest.raises(WebhookVerificationError, match="malformed webhook-timestamp"):
        verify_spec(headers)


@pytest.mark.parametrize(
    "signature",
    [
        "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",  # no version
        "v1,",
        SPEC_SIGNATURE[:8],  # cut short: not base64
        "v1,not*base64!",
        "v1,dawfeoifkpqwoekfpqoekf",  # the reference tests' other wrong one: bad padding
        ",g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    ],
)
def test_a_malformed_signature_fails(signature: str) -> None:
    with pytest.raises(WebhookVerificationError, match="malformed webhook-signature entry"):
        verify_spec(spec_headers(signature))


def test_a_malformed_entry_beside_a_match_is_skipped() -> None:
    verify_spec(spec_headers(f"garbage {SPEC_SIGNATURE}"))


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("whsec_not*base64", "not valid: expected 'whsec_' followed by base64"),
        ("whsec_", "is empty"),
        ("", "is empty"),
    ],
)
def test_a_malformed_secret_is_a_configuration_error(secret: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        verify(secret, spec_headers(), SPEC_BODY, now=SPEC_TIMESTAMP)
    # Not a verification failure: the receiver is misconfigured, the request may be fine.
    assert not isinstance(caught.value, WebhookVerificationError)
    assert "not*base64" not in str(caught.value), "the error quotes the secret"


def test_a_negative_tolerance_is_refused() -> None:
    with pytest.raises(ValueError, match="tolerance must not be negative"):
        verify_spec(spec_headers(), tolerance=-1)


# ------------------------------------------------------------------ sign: refusals


@pytest.mark.parametrize("msg_id", ["", "msg.1", " msg", "msg\n"])
def test_sign_refuses_an_ambiguous_message_id(msg_id: str) -> None:
    with pytest.raises(ValueError, match="message id"):
        sign(SPEC_SECRET, msg_id, SPEC_TIMESTAMP, SPEC_BODY)


@pytest.mark.parametrize("timestamp", [-1, 10**12, 1.5, True, "1614265330"])
def test_sign_refuses_a_timestamp_that_is_not_integer_seconds(timestamp: object) -> None:
    with pytest.raises(ValueError, match="integer seconds"):
        sign(SPEC_SECRET, SPEC_ID, timestamp, SPEC_BODY)  # type: ignore[arg-type]
