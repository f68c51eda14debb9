"""Every Python and TOML block of the docs is checked: a reader can copy it as it is.

Python blocks are type-checked with ``mypy --strict`` (one run over them all, written
to a directory as modules) and imported, which runs them. A MyST comment line right
before a block changes that: ``% docs-test: module=NAME`` names the module (another
block may import it), ``no-run`` type-checks only, ``fragment`` checks nothing. The
fragments are listed below, so that they stay few. TOML blocks are parsed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([*ROOT.glob("docs/*.md"), *ROOT.glob("docs/plugins/*.md")])
FENCE = re.compile(r"^```(python|toml)\s*$")
MARKER = re.compile(r"^% docs-test:(.*)$")
# Blocks shown on purpose as parts of a whole; each says why in its marker.
FRAGMENTS = {
    "agent.md:327",  # a Windows service: needs pywin32, which has no stubs here
}


KNOWN = {"fragment", "no-run"}


@attrs.frozen
class Block:
    page: str
    line: int
    language: str
    code: str
    options: frozenset[str]

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def module(self) -> str:
        for option in self.options:
            if option.startswith("module="):
                return option.removeprefix("module=")
        return re.sub(r"\W", "_", f"docs_{self.page.removesuffix('.md')}_{self.line}")


def _blocks(page: Path) -> Iterator[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    name = str(page.relative_to(ROOT / "docs"))
    for index, line in enumerate(lines):
        if not (fence := FENCE.match(line)):
            continue
        end = lines.index("```", index + 1)
        marker = MARKER.match(lines[index - 1]) if index else None
        # The words before "(": the parenthesis says why, for the reader of the source.
        options = frozenset(marker.group(1).split("(")[0].split()) if marker else frozenset()
        code = "\n".join(lines[index + 1 : end]) + "\n"
        yield Block(name, index + 1, fence.group(1), code, options)


BLOCKS = [block for page in PAGES for block in _blocks(page)]
PYTHON = [b for b in BLOCKS if b.language == "python" and "fragment" not in b.options]
TOML = [b for b in BLOCKS if b.language == "toml"]


def _source_paths() -> list[str]:
    """The worktree's own sources first, so the blocks are checked against them."""
    return [str(ROOT / "src"), *(str(p) for p in sorted(ROOT.glob("plugins/*/src")))]


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("docs_blocks")
    for block in PYTHON:
        (directory / f"{block.module}.py").write_text(block.code, encoding="utf-8")
    return directory


def _environment(modules: Path) -> dict[str, str]:
    path = os.pathsep.join([str(modules), *_source_paths(), os.environ.get("PYTHONPATH", "")])
    return os.environ | {"PYTHONPATH": path, "MYPYPATH": os.pathsep.join(_source_paths())}


# No config file: the blocks are checked as a reader's project would check them.
MYPY = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--config-file="]


def test_fragments_are_marked_and_listed() -> None:
    marked = {b.id for b in BLOCKS if "fragment" in b.options}
    assert marked == FRAGMENTS, "a fragment block needs both its marker and a FRAGMENTS entry"


def test_markers_have_known_options() -> None:
    for block in BLOCKS:
        unknown = {o for o in block.options if o not in KNOWN and not o.startswith("module=")}
        assert not unknown, f"{block.id}: unknown docs-test options {sorted(unknown)}"


def test_module_names_are_unique() -> None:
    names = [block.module for block in PYTHON]
    assert len(names) == len(set(names))


def test_python_blocks_pass_mypy_strict(modules: Path) -> None:
    files = sorted(str(path) for path in modules.glob("*.py"))
    result = subprocess.run(
        [*MYPY, *files],
        capture_output=True,
        text=True,
        cwd=modules,
        env=_environment(modules),
        check=False,
    )
    assert result.returncode == 0, _by_block(result.stdout + result.stderr)


def _by_block(output: str) -> str:
    """mypy's messages with each module's page and line instead of its file name."""
    for block in PYTHON:
        output = re.sub(rf"{re.escape(block.module)}\.py:(\d+)", _page_line(block), output)
    return output


def _page_line(block: Block) -> Callable[[re.Match[str]], str]:
    return lambda match: f"docs/{block.page}:{block.line + int(match.group(1))}"


@pytest.mark.parametrize(
    "block", [b for b in PYTHON if "no-run" not in b.options], ids=lambda b: b.id
)
def test_python_block_runs(modules: Path, block: Block) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import {block.module}"],
        capture_output=True,
        text=True,
        cwd=modules,
        env=_environment(modules),
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("block", TOML, ids=lambda b: b.id)
def test_toml_block_parses(block: Block) -> None:
    tomllib.loads(block.code)


def test_blocks_are_found() -> None:
    pages = {block.page for block in BLOCKS}
    assert {"plugin-guide.md", "configuration.md", "plugins/wmi.md"} <= pages


def test_guide_pyproject_agrees_with_the_example_plugin() -> None:
    guide = next(b for b in TOML if b.page == "plugin-guide.md" and "[project]" in b.code)
    shown = tomllib.loads(guide.code)
    example = tomllib.loads(
        (ROOT / "examples/third_party_plugin/pyproject.toml").read_text(encoding="utf-8")
    )
    assert shown["build-system"] == example["build-system"]
    assert shown["project"]["dependencies"] == example["project"]["dependencies"]
    assert shown["project"]["requires-python"] == example["project"]["requires-python"]
    assert set(shown["project"]["entry-points"]) == {"lunasentri"}
