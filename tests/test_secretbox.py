"""The secret box: AES-256-GCM envelopes, the keyring, the key file and rotation."""

from __future__ import annotations

import base64
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lunasentri_core.config import Settings
from lunasentri_core.errors import ConfigError
from lunasentri_core.secretbox import (
    KEY_FILE_NAME,
    NONCE_BYTES,
    DecryptionError,
    KeyFileError,
    Keyring,
    SecretBox,
    SecretBoxError,
    UnknownKeyError,
    generate_key,
    key_id_of,
    load_key_file,
    parse_envelope,
    rotate,
    rotate_key_file,
)

CONTEXT = "credential_profiles/1/password"
KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def _box(**keys: bytes) -> SecretBox:
    current = next(reversed(keys))
    return SecretBox(Keyring(keys, current))


# --------------------------------------------------------------------------- envelopes


def test_round_trip_of_text_and_bytes() -> None:
    box = _box(a=KEY_A)
    assert box.decrypt_text(box.encrypt("hunter2", CONTEXT), CONTEXT) == "hunter2"
    assert box.decrypt(box.encrypt(b"\x00\xff", CONTEXT), CONTEXT) == b"\x00\xff"


def test_the_envelope_is_versioned_and_names_its_key() -> None:
    envelope = _box(a=KEY_A).encrypt("hunter2", CONTEXT)
    version, key_id, body = envelope.split(":")
    assert (version, key_id) == ("v1", "a")
    assert "hunter2" not in envelope
    # nonce (12) + ciphertext (7) + tag (16)
    assert len(parse_envelope(envelope)[1]) == NONCE_BYTES + 7 + 16
    assert envelope.isascii()
    assert "=" not in body


def test_equal_plaintexts_get_different_nonces() -> None:
    box = _box(a=KEY_A)
    envelopes = [box.encrypt("same", CONTEXT) for _ in range(50)]
    nonces = {parse_envelope(e)[1][:NONCE_BYTES] for e in envelopes}
    assert len(nonces) == 50


def test_an_envelope_opens_only_for_its_own_context() -> None:
    box = _box(a=KEY_A)
    envelope = box.encrypt("hunter2", "credential_profiles/1/password")
    with pytest.raises(DecryptionError, match="credential_profiles/2/password"):
        box.decrypt(envelope, "credential_profiles/2/password")


@pytest.mark.parametrize("position", [0, NONCE_BYTES, -1])
def test_a_tampered_envelope_fails(position: int) -> None:
    box = _box(a=KEY_A)
    key_id, blob = parse_envelope(box.encrypt("hunter2", CONTEXT))
    flipped = bytearray(blob)
    flipped[position] ^= 0x01
    body = base64.urlsafe_b64encode(bytes(flipped)).rstrip(b"=").decode()
    with pytest.raises(DecryptionError, match="tampered"):
        box.decrypt(f"v1:{key_id}:{body}", CONTEXT)


def test_a_key_with_the_same_id_but_other_bytes_fails() -> None:
    envelope = _box(a=KEY_A).encrypt("hunter2", CONTEXT)
    with pytest.raises(DecryptionError):
        _box(a=KEY_B).decrypt(envelope, CONTEXT)


def test_relabelling_an_envelope_with_another_key_id_fails() -> None:
    box = _box(a=KEY_A, b=KEY_A)  # even when both ids hold the same key
    _, _, body = box.encrypt("hunter2", CONTEXT).split(":")
    with pytest.raises(DecryptionError):
        box.decrypt(f"v1:a:{body}", CONTEXT)


@pytest.mark.parametrize(
    ("envelope", "message"),
    [
        ("hunter2", "not a v1"),
        ("v2:a:AAAA", "not a v1"),
        ("v1:A B:AAAA", "no valid key id"),
        ("v1:a:!!!!", "not base64"),
        ("v1:a:AAAA", "truncated"),
    ],
)
def test_a_malformed_envelope_fails_clearly(envelope: str, message: str) -> None:
    with pytest.raises(DecryptionError, match=message):
        _box(a=KEY_A).decrypt(envelope, CONTEXT)


def test_a_missing_key_id_is_named() -> None:
    envelope = _box(old=KEY_A).encrypt("hunter2", CONTEXT)
    with pytest.raises(UnknownKeyError, match="'old'") as caught:
        _box(new=KEY_B).decrypt(envelope, CONTEXT)
    assert caught.value.key_id == "old"
    assert "new" in str(caught.value)


@given(plaintext=st.binary(max_size=2048), context=st.text(max_size=64))
def test_arbitrary_bytes_round_trip(plaintext: bytes, context: str) -> None:
    box = _box(a=KEY_A)
    assert box.decrypt(box.encrypt(plaintext, context), context) == plaintext


@given(plaintext=st.text(max_size=512))
def test_arbitrary_text_round_trips(plaintext: str) -> None:
    box = _box(a=KEY_A)
    assert box.decrypt_text(box.encrypt(plaintext, CONTEXT), CONTEXT) == plaintext


# --------------------------------------------------------------------------- rotation


def test_after_rotation_old_envelopes_open_and_new_ones_use_the_new_key() -> None:
    old = _box(k1=KEY_A).encrypt("hunter2", CONTEXT)
    rotated = _box(k1=KEY_A, k2=KEY_B)
    assert rotated.decrypt_text(old, CONTEXT) == "hunter2"
    assert key_id_of(rotated.encrypt("x", CONTEXT)) == "k2"


def test_reencrypt_moves_an_envelope_to_the_current_key() -> None:
    old = _box(k1=KEY_A).encrypt("hunter2", CONTEXT)
    rotated = _box(k1=KEY_A, k2=KEY_B)
    moved = rotated.reencrypt(old, CONTEXT)
    assert key_id_of(moved) == "k2"
    assert _box(k2=KEY_B).decrypt_text(moved, CONTEXT) == "hunter2"
    assert rotated.reencrypt(moved, CONTEXT) == moved  # a second run changes nothing


def test_reencrypt_refuses_an_envelope_of_another_context() -> None:
    old = _box(k1=KEY_A).encrypt("hunter2", CONTEXT)
    with pytest.raises(DecryptionError):
        _box(k1=KEY_A, k2=KEY_B).reencrypt(old, "credential_profiles/2/password")


# --------------------------------------------------------------------------- the key file


@posix_only
def test_the_key_file_is_created_owner_only(tmp_path: Path) -> None:
    box = SecretBox(Keyring.from_settings(Settings(data_dir=tmp_path).secrets, tmp_path))
    path = tmp_path / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert box.keyring.source == path
    # Read again, it is the same key: secrets sealed before a restart still open.
    again = SecretBox(load_key_file(path, create=True))
    assert again.decrypt_text(box.encrypt("hunter2", CONTEXT), CONTEXT) == "hunter2"
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE_NAME]  # no temporary left


def test_the_key_file_is_created_in_a_missing_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "data"
    keyring = Keyring.from_settings(Settings(data_dir=data_dir).secrets, data_dir)
    assert keyring.source == data_dir / KEY_FILE_NAME


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_key_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / KEY_FILE_NAME
    load_key_file(path, create=True)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match=f"chmod 600 {path}"):
        load_key_file(path, create=True)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no key"),
        ("k1\n", r'line 1: expected "<id> <base64 key>"'),
        ("K1 " + generate_key() + "\n", "line 1: key id 'K1'"),
        ("k1 c2hvcnQ=\n", "line 1: expected 32 bytes"),
        ("k1 caf\u00e9\n", "is not ASCII text"),
    ],
)
def test_a_malformed_key_file_is_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / KEY_FILE_NAME
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=message):
        load_key_file(path, create=False)


def test_rotating_the_key_file_adds_a_current_key_and_keeps_the_old(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    box = SecretBox(load_key_file(path, create=True))
    old = box.encrypt("hunter2", CONTEXT)
    new_id = rotate_key_file(path)
    rotated = SecretBox(load_key_file(path, create=False))
    assert rotated.keyring.current == new_id != key_id_of(old)
    assert set(rotated.keyring.keys) == {key_id_of(old), new_id}
    assert key_id_of(rotated.reencrypt(old, CONTEXT)) == new_id
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_rotations_at_once_keep_every_key(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    first = load_key_file(path, create=True).current
    with ThreadPoolExecutor(max_workers=8) as pool:
        added = set(pool.map(lambda _: rotate_key_file(path), range(8)))
    assert set(load_key_file(path, create=False).keys) == added | {first}


def test_a_box_reads_a_key_added_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    stale = SecretBox(load_key_file(path, create=True))
    rotate_key_file(path)  # as `lunasentri keys rotate` in another process would
    fresh = SecretBox(load_key_file(path, create=False)).encrypt("hunter2", CONTEXT)
    assert stale.decrypt_text(fresh, CONTEXT) == "hunter2"


def test_a_box_encrypts_under_a_key_added_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    box = SecretBox(load_key_file(path, create=True))
    first = key_id_of(box.encrypt("hunter2", CONTEXT))
    new_id = rotate_key_file(path)
    assert key_id_of(box.encrypt("hunter2", CONTEXT)) == new_id != first


def test_rotate_uses_the_key_file_when_no_keys_are_set(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    new_id = rotate(settings.secrets, tmp_path)
    assert Keyring.from_settings(settings.secrets, tmp_path).current == new_id


def test_rotate_asks_for_a_new_setting_when_keys_come_from_settings(tmp_path: Path) -> None:
    settings = Settings.load(
        environ={}, data_dir=tmp_path, secrets={"keys": {"k1": generate_key()}}
    )
    with pytest.raises(SecretBoxError, match=r"add a new key there.*\[secrets\] current"):
        rotate(settings.secrets, tmp_path)
    assert not (tmp_path / KEY_FILE_NAME).exists()


# --------------------------------------------------------------------------- settings


def test_keys_from_settings_and_the_current_one(tmp_path: Path) -> None:
    k1, k2 = generate_key(), generate_key()
    environ = {"LUNASENTRI_SECRETS__KEYS__K2": k2, "LUNASENTRI_SECRETS__CURRENT": "k2"}
    settings = Settings.load(environ=environ, data_dir=tmp_path, secrets={"keys": {"k1": k1}})
    keyring = Keyring.from_settings(settings.secrets, tmp_path)
    assert keyring.keys == {"k1": base64.b64decode(k1), "k2": base64.b64decode(k2)}
    assert keyring.current == "k2"
    assert keyring.source is None
    assert not (tmp_path / KEY_FILE_NAME).exists()  # no key file when keys are set


def test_a_single_key_from_settings_is_current(tmp_path: Path) -> None:
    settings = Settings.load(environ={"LUNASENTRI_SECRETS__KEYS__MAIN": generate_key()})
    assert Keyring.from_settings(settings.secrets, tmp_path).current == "main"


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ({"keys": {"k1": "c2hvcnQ="}}, r"secrets.keys: key 'k1': expected 32 bytes"),
        ({"keys": {"k1": "not base64!"}}, r"secrets.keys: key 'k1': expected a base64 key"),
        ({"keys": {"a:b": generate_key()}}, r"secrets.keys: key 'a:b': key id 'a:b'"),
        ({"keys": {"k1": generate_key(), "k2": generate_key()}}, r"secrets.current: name the"),
        ({"keys": {"k1": generate_key()}, "current": "k9"}, r"secrets.current: 'k9' is not"),
        ({"current": "k1"}, r"secrets.current: 'k1' is not"),
    ],
)
def test_bad_key_settings_are_named(secrets: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(environ={}, secrets=secrets)


def test_the_key_file_setting_moves_it(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "keys"
    settings = Settings.load(environ={}, data_dir=tmp_path, secrets={"key_file": str(path)})
    assert Keyring.from_settings(settings.secrets, tmp_path).source == path
    assert path.exists()


def test_key_material_never_shows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    encoded = generate_key()
    settings = Settings.load(environ={}, data_dir=tmp_path, secrets={"keys": {"k1": encoded}})
    box = SecretBox(Keyring.from_settings(settings.secrets, tmp_path))
    box.decrypt(box.encrypt("hunter2", CONTEXT), CONTEXT)
    raw = base64.b64decode(encoded)
    shown = [repr(settings), str(settings), repr(settings.secrets), repr(box), repr(box.keyring)]
    shown.append(caplog.text)
    for text in shown:
        assert encoded not in text
        assert repr(raw) not in text
        assert "hunter2" not in text
    assert "'k1': '***'" in repr(settings.secrets)
    assert "'k1': '***'" in repr(box)
    # Nor in the message of a refused setting.
    bad = base64.b64encode(b"x" * 31).decode()
    with pytest.raises(ConfigError) as caught:
        Settings.load(environ={}, secrets={"keys": {"k1": bad}})
    assert bad not in str(caught.value)


def test_a_key_file_key_never_shows(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    keyring = load_key_file(path, create=True)
    encoded = path.read_text().splitlines()[-1].split()[1]
    assert encoded not in repr(keyring)
    assert encoded not in repr(SecretBox(keyring))


def test_processes_starting_at_once_share_one_key_file(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    with ThreadPoolExecutor(max_workers=8) as pool:
        keyrings = list(pool.map(lambda _: load_key_file(path, create=True), range(16)))
    assert len({keyring.current for keyring in keyrings}) == 1
    assert len(load_key_file(path, create=False).keys) == 1


def test_a_key_file_that_cannot_be_created_is_reported(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("a file where the data directory should be")
    with pytest.raises(KeyFileError, match="cannot create the key file"):
        load_key_file(tmp_path / "data" / KEY_FILE_NAME, create=True)
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
