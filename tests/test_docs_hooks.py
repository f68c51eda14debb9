"""The hook reference (docs/hooks.md) stays complete and every hook stays documented."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lunasentri_core import hookspecs

HOOKS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "hooks.md"
SPEC_MARKER = f"{hookspecs.PROJECT_NAME}_spec"


def _specs() -> dict[str, Callable[..., Any]]:
    return {
        name: function
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(function, SPEC_MARKER)
    }


SPECS = _specs()


@pytest.fixture(scope="module")
def page() -> str:
    return HOOKS_PAGE.read_text(encoding="utf-8")


def _autofunction_targets(page: str) -> set[str]:
    return set(re.findall(r"^\.\. autofunction:: lunasentri_core\.hookspecs\.(\w+)$", page, re.M))


def test_hookspecs_module_defines_hooks() -> None:
    assert SPECS, "no hook specs found: was the spec marker renamed?"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hook_has_heading_and_autofunction(page: str, name: str) -> None:
    assert re.search(rf"^#+ `{name}`$", page, re.M), f"docs/hooks.md has no heading for {name}"
    assert name in _autofunction_targets(page), f"docs/hooks.md does not autofunction {name}"


def test_page_documents_no_unknown_hook(page: str) -> None:
    unknown = _autofunction_targets(page) - set(SPECS)
    assert not unknown, f"docs/hooks.md documents hooks that do not exist: {sorted(unknown)}"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hook_docstring_is_complete(name: str) -> None:
    spec = SPECS[name]
    doc = inspect.getdoc(spec)
    assert doc, f"{name} has no docstring"
    summary = doc.splitlines()[0]
    assert summary.strip(), f"{name}: the docstring must start with a one-line summary"
    for parameter in inspect.signature(spec).parameters:
        assert f":param {parameter}:" in doc, f"{name}: no ':param {parameter}:'"
    documented = set(re.findall(r":param (\w+):", doc))
    extra = documented - set(inspect.signature(spec).parameters)
    assert not extra, f"{name}: documents parameters it does not take: {sorted(extra)}"
    assert ":returns:" in doc, f"{name}: no ':returns:'"
    assert re.search(r"^\.\. versionadded:: \d+\.\d+", doc, re.M), f"{name}: no versionadded"
