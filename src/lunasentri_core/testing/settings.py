"""Decoding a plugin's settings or a notifier's channel class as the hub does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from lunasentri_core.codec import decode

T = TypeVar("T")


def decode_settings(cls: type[T], mapping: Mapping[str, Any]) -> T:
    """Structure ``mapping`` into ``cls`` exactly as the hub does.

    ``cls`` is a plugin's ``settings_class`` (from its ``[plugins.<name>]`` table)
    or a notifier's ``channel_class`` (from a channel's ``config``): the same
    converter, so durations like ``"30s"``, unknown keys refused and validators
    run. Use it to test your class's defaults and its validators::

        with pytest.raises(ValidationError) as caught:
            decode_settings(MySettings, {"timeout": 0})
        assert caught.value.errors[0].path == "timeout"

    :returns: The instance.
    :raises ~lunasentri_core.ValidationError: listing every problem, each with the
        path of its field relative to the table (``timeout``, ``hosts[2]``); the
        hub prefixes it (``plugins.mycheck.timeout``, ``config.timeout``).
    """
    return decode(dict(mapping), cls, what=f"{cls.__name__} settings")
