"""What the README and the docs say about the repository matches it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("## Layout", 1)[1].split("```text\n", 1)[1].split("\n```", 1)[0]


def test_the_layout_names_every_plugin() -> None:
    plugins = {path.parent.name for path in (ROOT / "plugins").glob("*/pyproject.toml")}
    named = {line.split()[0].rstrip("/") for line in _layout().splitlines() if line.strip()}
    assert plugins, "no plugins found: the test looks in the wrong place"
    assert plugins - named == set()


def _session_sources() -> dict[str, str]:
    """Each nox session's source, by name."""
    text = (ROOT / "noxfile.py").read_text(encoding="utf-8")
    sources = {}
    for chunk in text.split("@nox.session")[1:]:
        name = chunk.split("def ", 1)[1].split("(", 1)[0]
        sources[name] = chunk
    return sources


def test_the_docs_name_the_session_that_runs_a_script() -> None:
    sessions = _session_sources()
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    claims = 0
    for page in pages:
        for paragraph in page.read_text(encoding="utf-8").split("\n\n"):
            if "examples/" not in paragraph or "` runs" not in paragraph:
                continue
            for session in re.findall(r"`nox -s (\w+)` runs", paragraph):
                script = re.search(r"examples/[\w/]+\.py", paragraph)
                assert script is not None
                claims += 1
                assert script.group(0) in sessions[session], (page.name, session)
    assert claims > 0, "no claim found: the test looks for the wrong wording"
