"""The base of every contract suite: abstract until subclassed."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import pytest

from lunasentri_core.codec import decode
from lunasentri_core.testing.aio import DEFAULT_BACKEND


class Contract:
    """Base class of the contract suites.

    A suite is not collected on its own, even when imported into a test module;
    every subclass is collected, whatever its name (name it ``Test...`` anyway, for
    readers). A subclass meant as another abstract base, shared by several test
    classes, sets ``__test__ = False`` in its own body.
    """

    __test__: ClassVar[bool] = False

    async_backend: ClassVar[str] = DEFAULT_BACKEND
    """Event loop that runs coroutine methods of the component (``"asyncio"`` or ``"trio"``).

    Not named ``anyio_backend``: that is the anyio pytest plugin's fixture.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__test__" not in cls.__dict__:
            cls.__test__ = True


def check_name(cls: type[Any], kind: str) -> str:
    """Assert a component class has the non-empty ``name`` it is registered under."""
    name = getattr(cls, "name", None)
    assert isinstance(name, str), f"the {kind} class {cls.__name__} needs a str 'name'"
    assert name, f"the {kind} class {cls.__name__} has an empty 'name'"
    assert name == name.strip(), f"name {name!r} has surrounding whitespace"
    return name


def check_settings_class(cls: type[Any], kind: str) -> None:
    """Assert ``settings_class`` is ``None`` or an attrs class built from an empty table."""
    assert hasattr(cls, "settings_class"), (
        f"the {kind} class {cls.__name__} needs a 'settings_class' attribute (None for none)"
    )
    settings_class = cls.settings_class
    if settings_class is None:
        return
    assert attrs.has(settings_class), f"settings_class {settings_class!r} is not an attrs class"
    try:
        settings_class()
    except TypeError as error:
        pytest.fail(f"every field of {settings_class.__name__} needs a default: {error}")
    # The plugin manager structures settings from an empty [plugins.<name>] table.
    decode({}, settings_class, what=f"empty settings of {cls.__name__}")
