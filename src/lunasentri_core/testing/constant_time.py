"""Seeing how a component compares secrets, without measuring time.

An ``==`` between a presented secret and the expected one stops at the first
character that differs, so how long a refusal takes tells a caller how much of
a guess was right. :func:`hmac.compare_digest` (``secrets.compare_digest`` is the
same function) takes the same time wherever the difference is. Timing
assertions would flake on a shared machine; these helpers watch the calls
instead:

- :func:`watch_compare_digest` records every call of ``compare_digest`` while it
  is active, in any thread, whether the caller wrote ``hmac.compare_digest(...)``
  or imported the function under any name.
- :func:`presented` wraps the credential values a test hands to a component in
  strings that record an ``==`` or ``!=`` against another secret-sized string.
  It sees the naive comparison of a value as it came in; a value the component
  has transformed first (``.strip()``, ``.partition(" ")``) is a plain string
  again, which is why the contract asks for ``compare_digest`` positively.
"""

from __future__ import annotations

import contextlib
import hmac
import operator
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from lunasentri_core.components import Credentials

MIN_COMPARED_CHARS = 8
"""An ``==`` of a presented value with a string this long or longer is recorded
(shorter ones are schemes and flags: ``"Bearer"``, ``""``)."""


@attrs.define
class Comparisons:
    """What :func:`watch_compare_digest` and :func:`presented` saw."""

    digest: list[tuple[Any, Any]] = attrs.field(factory=list)
    """Argument pairs of every ``compare_digest`` call."""
    equality: list[tuple[str, str]] = attrs.field(factory=list)
    """(presented value, the string it was compared with) for every ``==``/``!=``."""
    _lock: threading.Lock = attrs.field(factory=threading.Lock, repr=False)

    def add_digest(self, a: Any, b: Any) -> None:
        with self._lock:
            self.digest.append((a, b))

    def add_equality(self, presented: str, other: str) -> None:
        with self._lock:
            self.equality.append((presented, other))


@contextlib.contextmanager
def watch_compare_digest(into: Comparisons | None = None) -> Iterator[Comparisons]:
    """Record every call of :func:`hmac.compare_digest` made inside the block.

    Every module-level name bound to the function (``hmac.compare_digest``,
    ``secrets.compare_digest``, ``from hmac import compare_digest`` in any
    imported module) is replaced by a recording wrapper and restored on exit, so
    calls from worker threads are seen too. A reference kept elsewhere (a default
    argument, an attribute of an object) is not. Not reentrant, and not for use
    while another thread imports modules::

        with watch_compare_digest() as seen:
            authenticator.authenticate(credentials, state)
        assert seen.digest, "the token was not compared with hmac.compare_digest"
    """
    seen = into if into is not None else Comparisons()
    # hmac's is _hashlib's when OpenSSL is there; operator keeps its own fallback.
    wrappers = {id(original): _recording(original, seen) for original in _originals()}
    patched: list[tuple[dict[str, Any], str, Any]] = []
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            wrapper = wrappers.get(id(value))
            if wrapper is not None and callable(value):
                namespace[name] = wrapper
                patched.append((namespace, name, value))
    try:
        yield seen
    finally:
        for namespace, name, value in patched:
            namespace[name] = value


def _originals() -> list[Callable[[Any, Any], bool]]:
    found: list[Callable[[Any, Any], bool]] = [hmac.compare_digest]
    fallback = getattr(operator, "_compare_digest", None)
    if callable(fallback) and fallback is not hmac.compare_digest:
        found.append(fallback)
    return found


def _recording(original: Callable[[Any, Any], bool], seen: Comparisons) -> Callable[..., bool]:
    def compare_digest(a: Any, b: Any, /) -> bool:
        seen.add_digest(a, b)
        return original(a, b)

    return compare_digest


class PresentedValue(str):
    """A credential value as presented: records ``==`` and ``!=`` against secret-sized strings.

    Everything else behaves as for the plain string; methods that make a new
    string (``strip``, ``partition``, slicing) return plain strings.
    """

    _seen: Comparisons

    def __new__(cls, value: str, seen: Comparisons) -> PresentedValue:
        self = super().__new__(cls, value)
        self._seen = seen
        return self

    def _record(self, other: object) -> None:
        if isinstance(other, str) and len(other) >= MIN_COMPARED_CHARS:
            self._seen.add_equality(str(self), str(other))

    def __eq__(self, other: object) -> bool:
        self._record(other)
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        self._record(other)
        return str.__ne__(self, other)

    __hash__ = str.__hash__


def presented(credentials: Credentials, seen: Comparisons) -> Credentials:
    """``credentials`` with each header and cookie value a :class:`PresentedValue`."""
    return Credentials(
        headers={name: PresentedValue(value, seen) for name, value in credentials.headers.items()},
        cookies={name: PresentedValue(value, seen) for name, value in credentials.cookies.items()},
        client=credentials.client,
    )
