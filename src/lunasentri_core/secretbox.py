"""The secret box: stored credentials encrypted at rest with AES-256-GCM.

A secret is kept as an *envelope*, one ASCII string::

    v1:<key id>:<base64url(nonce || ciphertext || tag)>

* ``v1`` is the format version; any other version is refused.
* ``<key id>`` names the keyring key that encrypted it (lowercase letters, digits,
  ``.``, ``_`` and ``-``, at most 64 characters), so keys can rotate: decryption
  picks the key by id, and every key of the keyring decrypts.
* the nonce is 12 random bytes (96 bits, as NIST SP 800-38D recommends) drawn
  for every encryption; the 16-byte tag follows the ciphertext, as
  ``cryptography``'s ``AESGCM`` returns it; base64url has no padding.

Each encryption is bound to a *context*, the use of the secret, by the GCM
associated data (with the envelope's version and key id): a credential profile's
password is sealed with a context such as ``credential_profiles/42/password``,
so an envelope copied into another row, another field or under another key id
fails to decrypt instead of yielding the other row's secret.

The keyring's keys come from ``[secrets] keys`` in the settings, or, when none
are set, from a key file in the data directory that is created on first use with
owner-only permissions (``0600``). See the "Stored secrets" page of the docs.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lunasentri_core.errors import LunaSentriError

if TYPE_CHECKING:
    from lunasentri_core.config import SecretsSettings

__all__ = [
    "KEY_FILE_NAME",
    "DecryptionError",
    "KeyFileError",
    "Keyring",
    "SecretBox",
    "SecretBoxError",
    "UnknownKeyError",
    "generate_key",
    "key_id_of",
    "load_key_file",
    "rotate",
    "rotate_key_file",
]

VERSION = "v1"
KEY_BYTES = 32
"""AES-256."""
NONCE_BYTES = 12
"""96 bits: the nonce size GCM is defined for (NIST SP 800-38D)."""
KEY_FILE_NAME = "secret.keys"
KEY_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_KEY_ID_TEXT = "1 to 64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
_AAD_PREFIX = b"lunasentri-secret"
_BASE64URL = re.compile(r"^[A-Za-z0-9_-]*$")


class SecretBoxError(LunaSentriError):
    """A secret could not be sealed or opened; the message says why."""


class UnknownKeyError(SecretBoxError, LookupError):
    """An envelope names a key id that is not in the keyring."""

    def __init__(self, key_id: str, known: tuple[str, ...]) -> None:
        self.key_id = key_id
        listed = ", ".join(known) or "none"
        super().__init__(
            f"secret encrypted under key {key_id!r}, which is not in the keyring "
            f"(keys: {listed}); add that key back to [secrets] keys or the key file"
        )


class DecryptionError(SecretBoxError):
    """An envelope did not decrypt: malformed, tampered with, under a wrong key with
    the same id, or sealed for another context."""


class KeyFileError(SecretBoxError):
    """The key file cannot be used (unsafe permissions, unreadable or malformed)."""


def generate_key() -> str:
    """A new random AES-256 key, base64 as ``[secrets] keys`` takes it."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def decode_key(text: str) -> bytes:
    """The raw bytes of a base64 key; the error never repeats the key."""
    try:
        raw = base64.b64decode(text.encode(), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("expected a base64 key") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"expected {KEY_BYTES} bytes (AES-256) in base64, got {len(raw)}")
    return raw


def check_key_id(key_id: str) -> None:
    if not KEY_ID.match(key_id):
        raise ValueError(f"key id {key_id!r}: expected {_KEY_ID_TEXT}")


def masked_keys(keys: Mapping[str, object]) -> str:
    """How a table of keys shows in a repr: their ids, never their material."""
    return "{" + ", ".join(f"{key_id!r}: '***'" for key_id in keys) + "}"


@attrs.frozen
class Keyring:
    """Keys by id; ``current`` encrypts and every key decrypts.

    The key material never appears in the repr (nor in any message).
    """

    keys: Mapping[str, bytes] = attrs.field(repr=masked_keys)
    current: str
    source: Path | None = None
    """The key file the keys came from, re-read when an unknown key id turns up
    (another process rotated); ``None`` for keys from the settings."""

    def __attrs_post_init__(self) -> None:
        for key_id, key in self.keys.items():
            check_key_id(key_id)
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {key_id!r}: expected {KEY_BYTES} bytes")
        if self.current not in self.keys:
            raise ValueError(f"the current key {self.current!r} is not in the keyring")

    @classmethod
    def from_settings(cls, settings: SecretsSettings, data_dir: Path) -> Keyring:
        """The keys of ``[secrets] keys``, or else those of the key file (created
        with one new key if it does not exist)."""
        if settings.keys:
            keys = {key_id: decode_key(text) for key_id, text in settings.keys.items()}
            return cls(keys, settings.current_key_id())
        return load_key_file(settings.key_file_path(data_dir), create=True)


class SecretBox:
    """Seals and opens secrets under a :class:`Keyring`."""

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._stamp: tuple[int, int] | None = None
        """The key file's (inode, mtime) when last read; ``None``: read it at first use."""

    def __repr__(self) -> str:
        return f"SecretBox(keyring={self._keyring!r})"

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    def encrypt(self, plaintext: bytes | str, context: str) -> str:
        """The envelope of ``plaintext`` (text is UTF-8) under the current key, bound
        to ``context`` (e.g. ``"credential_profiles/42/password"``)."""
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        self._follow_key_file()  # a key added by a rotation encrypts from then on
        key_id = self._keyring.current
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = AESGCM(self._keyring.keys[key_id]).encrypt(
            nonce, data, _associated_data(key_id, context)
        )
        body = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()
        return f"{VERSION}:{key_id}:{body}"

    def decrypt(self, envelope: str, context: str) -> bytes:
        """The plaintext of ``envelope`` sealed for ``context``.

        :raises UnknownKeyError: its key id is not in the keyring.
        :raises DecryptionError: malformed, tampered with, or another context.
        """
        key_id, blob = parse_envelope(envelope)
        key = self._key(key_id)
        nonce, sealed = blob[:NONCE_BYTES], blob[NONCE_BYTES:]
        try:
            return AESGCM(key).decrypt(nonce, sealed, _associated_data(key_id, context))
        except InvalidTag:
            raise DecryptionError(
                f"secret under key {key_id!r} does not decrypt for {context!r}: tampered "
                "with, copied from elsewhere, or the key with that id has changed"
            ) from None

    def decrypt_text(self, envelope: str, context: str) -> str:
        try:
            return self.decrypt(envelope, context).decode()
        except UnicodeDecodeError:
            raise DecryptionError(f"secret for {context!r} is not UTF-8 text") from None

    def reencrypt(self, envelope: str, context: str) -> str:
        """``envelope`` sealed under the current key (what ``lunasentri keys rotate``
        runs over every stored secret). One already under the current key is checked
        and returned as it is, so an interrupted rotation can simply run again."""
        plaintext = self.decrypt(envelope, context)
        if key_id_of(envelope) == self._keyring.current:
            return envelope
        return self.encrypt(plaintext, context)

    def _key(self, key_id: str) -> bytes:
        if key_id not in self._keyring.keys:
            self._follow_key_file()
        try:
            return self._keyring.keys[key_id]
        except KeyError:
            raise UnknownKeyError(key_id, tuple(self._keyring.keys)) from None

    def _follow_key_file(self) -> None:
        """Read the key file again if it changed since it was read (another process
        rotated): a rotation replaces it, giving it a new inode."""
        source = self._keyring.source
        if source is None:
            return
        try:
            info = source.stat()
        except OSError as error:
            raise KeyFileError(f"cannot read the key file {source}: {error.strerror}") from None
        stamp = (info.st_ino, info.st_mtime_ns)
        if stamp != self._stamp:
            # Stamped before reading: a change in between is read at the next use.
            self._keyring = load_key_file(source, create=False)
            self._stamp = stamp


def key_id_of(envelope: str) -> str:
    """The id of the key ``envelope`` was sealed under."""
    return parse_envelope(envelope)[0]


def parse_envelope(envelope: str) -> tuple[str, bytes]:
    """``(key id, nonce || ciphertext || tag)`` of a well-formed envelope."""
    version, _, rest = envelope.partition(":")
    key_id, _, body = rest.partition(":")
    if version != VERSION:
        raise DecryptionError(f"not a {VERSION} secret envelope")
    if not KEY_ID.match(key_id):
        raise DecryptionError("secret envelope has no valid key id")
    try:
        if not _BASE64URL.match(body):  # the decoder would skip stray characters
            raise ValueError(body)
        blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise DecryptionError(f"secret envelope under key {key_id!r} is not base64") from None
    if len(blob) < NONCE_BYTES + 16:
        raise DecryptionError(f"secret envelope under key {key_id!r} is truncated")
    return key_id, blob


def _associated_data(key_id: str, context: str) -> bytes:
    return b"\x00".join([_AAD_PREFIX, VERSION.encode(), key_id.encode(), context.encode()])


# --------------------------------------------------------------------------- the key file
# One key a line, "<id> <base64 key>"; the last line is the current key. It is
# written whole to a new 0600 file that then takes the key file's name, so a
# reader never sees half a file.


def load_key_file(path: Path, *, create: bool) -> Keyring:
    """The keyring in ``path``; with ``create``, a missing file is made with one key."""
    if create and not path.exists():
        _create_key_file(path, {_new_key_id(()): secrets.token_bytes(KEY_BYTES)})
    _check_permissions(path)
    try:
        text = path.read_text(encoding="ascii")
    except OSError as error:
        raise KeyFileError(f"cannot read the key file {path}: {error.strerror}") from None
    except UnicodeDecodeError:  # not its text: the file holds keys
        raise KeyFileError(f"the key file {path} is not ASCII text") from None
    keys = _parse_key_file(path, text)
    return Keyring(keys, next(reversed(keys)), source=path)


def rotate_key_file(path: Path) -> str:
    """Add a new current key to the key file (the old ones stay, for decryption) and
    return its id. Concurrent rotations are serialized by a lock file beside it."""
    with _locked(path):
        keyring = load_key_file(path, create=True)
        key_id = _new_key_id(tuple(keyring.keys))
        keys = {**keyring.keys, key_id: secrets.token_bytes(KEY_BYTES)}
        _replace_key_file(path, keys)
    return key_id


def rotate(settings: SecretsSettings, data_dir: Path) -> str:
    """Add a new current key to the key file; refused when the keys come from the
    settings, which only their owner can change."""
    if settings.keys:
        raise SecretBoxError(
            "the secret keys come from [secrets] keys: add a new key there (generate "
            "one with `python -c 'import lunasentri_core.secretbox as s; "
            "print(s.generate_key())'`) and set [secrets] current to its id"
        )
    return rotate_key_file(settings.key_file_path(data_dir))


def _parse_key_file(path: Path, text: str) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            # Never repeat the line: it may hold a key.
            raise KeyFileError(f'key file {path}, line {number}: expected "<id> <base64 key>"')
        try:
            check_key_id(parts[0])
            keys[parts[0]] = decode_key(parts[1])
        except ValueError as error:
            raise KeyFileError(f"key file {path}, line {number}: {error}") from None
    if not keys:
        raise KeyFileError(f"key file {path} holds no key")
    return keys


def _check_permissions(path: Path) -> None:
    if os.name != "posix":
        return
    try:
        mode = path.stat().st_mode & 0o777
    except OSError as error:
        raise KeyFileError(f"cannot read the key file {path}: {error.strerror}") from None
    if mode & 0o077:
        raise KeyFileError(
            f"the key file {path} is readable or writable by others (mode {mode:04o}); "
            f"it must be the owner's alone: chmod 600 {path}"
        )


def _new_key_id(taken: tuple[str, ...]) -> str:
    while (key_id := "k" + secrets.token_hex(4)) in taken:
        pass
    return key_id


def _key_file_text(keys: Mapping[str, bytes]) -> bytes:
    header = "# LunaSentri secret keys: <id> <base64 key>; the last one encrypts.\n"
    lines = [f"{key_id} {base64.b64encode(key).decode()}\n" for key_id, key in keys.items()]
    return (header + "".join(lines)).encode("ascii")


def _write_private(path: Path, content: bytes) -> None:
    """Write ``content`` to a new file only the owner may read (O_EXCL, mode 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _create_key_file(path: Path, keys: Mapping[str, bytes]) -> None:
    temporary = _temporary(path)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_private(temporary, _key_file_text(keys))
        # link() fails if the name exists: when two processes start at once,
        # one file wins and both use it.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    except OSError as error:
        raise KeyFileError(f"cannot create the key file {path}: {error.strerror}") from None
    finally:
        with contextlib.suppress(OSError):  # never written, or already gone
            temporary.unlink()


def _replace_key_file(path: Path, keys: Mapping[str, bytes]) -> None:
    temporary = _temporary(path)
    try:
        _write_private(temporary, _key_file_text(keys))
        os.replace(temporary, path)
    except OSError as error:
        raise KeyFileError(f"cannot write the key file {path}: {error.strerror}") from None
    finally:
        with contextlib.suppress(OSError):  # gone once it took the key file's name
            temporary.unlink()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        raise KeyFileError(f"cannot open the lock file {lock}: {error.strerror}") from None
    try:
        if os.name == "posix":
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
