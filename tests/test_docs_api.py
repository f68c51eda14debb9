"""The reference pages document every public name, and only public names.

docs/api.md covers ``lunasentri_core`` and ``lunasentri_core.storage``;
docs/testing.md covers the test kit, ``lunasentri_core.testing``.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = {
    "lunasentri_core": "api.md",
    "lunasentri_core.storage": "api.md",
    "lunasentri_core.testing": "testing.md",
}
CURRENT_MODULE = re.compile(r"^\.\. (?:current)?module:: ([\w.]+)$")
DIRECTIVE = re.compile(r"^\.\. (?:auto)?(?:class|exception|data|function):: ([\w.]+)$")
# Fixtures have no directive of their own; they are the terms of a definition list.
DEFINITION_TERM = re.compile(r"^`(\w+)`$")


def _documented(page: str) -> dict[str, set[str]]:
    """Names documented on ``page``, by the module they are documented under."""
    by_module: dict[str, set[str]] = {}
    module = "lunasentri_core"
    for line in (DOCS / page).read_text(encoding="utf-8").splitlines():
        if match := CURRENT_MODULE.match(line.strip()):
            module = match.group(1)
        elif match := DIRECTIVE.match(line.strip()):
            name = match.group(1)
            qualified = name if name.startswith("lunasentri_core") else f"{module}.{name}"
            owner, _, short = qualified.rpartition(".")
            by_module.setdefault(owner, set()).add(short)
        elif match := DEFINITION_TERM.match(line):
            by_module.setdefault(module, set()).add(match.group(1))
    return by_module


def _public(module_name: str) -> set[str]:
    return set(importlib.import_module(module_name).__all__)


@pytest.mark.parametrize("module_name", sorted(PAGES))
def test_every_public_name_is_documented(module_name: str) -> None:
    page = PAGES[module_name]
    documented = _documented(page).get(module_name, set())
    missing = sorted(_public(module_name) - documented)
    assert not missing, f"docs/{page} does not document {module_name}.{missing}"


@pytest.mark.parametrize("module_name", sorted(PAGES))
def test_page_documents_only_public_names(module_name: str) -> None:
    page = PAGES[module_name]
    documented = _documented(page).get(module_name, set())
    private = sorted(documented - _public(module_name))
    assert not private, f"docs/{page} documents names outside {module_name}.__all__: {private}"
