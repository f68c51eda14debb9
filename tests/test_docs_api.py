"""The API reference (docs/api.md) documents every public name, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import pytest

import lunasentri_core
import lunasentri_core.storage

API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"
DIRECTIVE = re.compile(
    r"^\.\. (?:auto)?(?:class|exception|data|function):: (?P<name>[\w.]+)$", re.M
)
PUBLIC_MODULES = [lunasentri_core, lunasentri_core.storage]


def _documented() -> dict[str, set[str]]:
    """Names documented on the page, by the module they are documented under."""
    by_module: dict[str, set[str]] = {}
    module = "lunasentri_core"
    for line in API_PAGE.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^\.\. (?:current)?module:: ([\w.]+)$", line):
            module = match.group(1)
        elif match := DIRECTIVE.match(line):
            name = match.group("name")
            qualified = name if name.startswith("lunasentri_core") else f"{module}.{name}"
            owner, _, short = qualified.rpartition(".")
            by_module.setdefault(owner, set()).add(short)
    return by_module


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_every_public_name_is_documented(module: ModuleType) -> None:
    documented = _documented().get(module.__name__, set())
    missing = sorted(set(module.__all__) - documented)
    assert not missing, f"docs/api.md does not document {module.__name__}.{missing}"


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_page_documents_only_public_names(module: ModuleType) -> None:
    documented = _documented().get(module.__name__, set())
    private = sorted(documented - set(module.__all__))
    assert not private, f"docs/api.md documents names outside {module.__name__}.__all__: {private}"
