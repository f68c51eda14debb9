"""Sphinx configuration. Build with ``nox -s docs`` (warnings are errors)."""

from __future__ import annotations

import lunasentri_core

project = "LunaSentri"
author = "LunaSentri developers"
copyright = "LunaSentri developers"
release = lunasentri_core.__version__
version = ".".join(release.split(".")[:2])

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.viewcode", "sphinx_click"]
source_suffix = {".md": "markdown"}
root_doc = "index"
# dev/ holds notes for people working on this tree, not published pages.
exclude_patterns = ["_build", "dev", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist", "fieldlist"]
myst_heading_anchors = 3

# The documented import path is the public one (lunasentri_core.Reading), so keep
# type hints in the description, where they read as names rather than long paths.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"

html_theme = "alabaster"
html_title = f"LunaSentri {release}"
html_theme_options = {
    "description": "Monitor machines with plugins.",
    "fixed_sidebar": True,
}
