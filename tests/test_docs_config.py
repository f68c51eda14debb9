"""The configuration page's complete file is complete, and its values are the defaults."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import attrs

from lunasentri_core.config import Settings, settings_from_mapping

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
TABLE = re.compile(r"^\[([\w.]+)\]")
# A key set in the file, or shown commented out: `# public_url = "..."`.
KEY = re.compile(r"^#?\s*(\w+)\s*=")


def _complete_file() -> str:
    text = PAGE.read_text(encoding="utf-8")
    start = text.index("A complete file with the default values:")
    block = text[start:].split("```toml\n", 1)[1]
    return block.split("\n```", 1)[0]


def _shown_keys(toml_text: str) -> set[str]:
    """Dotted paths of every key the file sets or shows commented out."""
    table, keys = "", set()
    for line in toml_text.splitlines():
        if match := TABLE.match(line):
            table = match.group(1) + "."
        elif match := KEY.match(line):
            keys.add(table + match.group(1))
    return keys


def _setting_paths(cls: type[Any], prefix: str = "") -> set[str]:
    paths = set()
    for field in attrs.fields(cls):
        if field.name == "plugins":  # each plugin's own table, shown by example
            continue
        default = field.default
        if isinstance(default, attrs.Factory):
            default = None
        if attrs.has(type(default)):
            paths |= _setting_paths(type(default), f"{prefix}{field.name}.")
        else:
            paths.add(prefix + field.name)
    return paths


def test_every_setting_is_in_the_complete_file() -> None:
    missing = _setting_paths(Settings) - _shown_keys(_complete_file())
    assert missing == set(), f"docs/configuration.md's complete file lacks {sorted(missing)}"


def test_the_complete_file_holds_the_defaults(tmp_path: Path) -> None:
    data = tomllib.loads(_complete_file())
    del data["data_dir"]  # a path of the reader's machine
    del data["plugins"]  # an example of a plugin's table, not a default
    assert settings_from_mapping(data | {"data_dir": tmp_path}) == Settings(data_dir=tmp_path)
