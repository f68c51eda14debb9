"""``lunasentri plugin new``: generate a complete plugin distribution to start from.

The generated project is what ``examples/third_party_plugin`` shows, for any of the
four kinds of component: a ``pyproject.toml`` with the ``lunasentri`` entry point, a
src layout, a typed skeleton that works as generated, the contract suites of
:mod:`lunasentri_core.testing` wired into its tests, a noxfile and a README.

The files are templates under ``templates/`` (package data, read with
:mod:`importlib.resources`): ``common/`` for every kind, then ``<kind>/``, whose
files win over common ones of the same path. In paths, ``__package__`` and
``__plugin__`` stand for the import package and the plugin's name; a ``.tmpl``
suffix marks a file whose ``$name`` placeholders are filled in
(:class:`string.Template`, ``$$`` for a literal dollar). A file named ``_<key>.tmpl``
(one underscore) is a fragment: not copied, but filled in where another template
says ``$<key>``. A leading ``dot-`` in a name stands for a dot (``dot-gitignore``).
"""

from __future__ import annotations

import enum
import importlib.metadata
import importlib.util
import keyword
import re
import shutil
import string
import sys
from collections.abc import Iterator
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

import attrs

__all__ = [
    "BadNameError",
    "Kind",
    "PluginNames",
    "ScaffoldError",
    "check_not_installed",
    "core_requirement",
    "generate",
    "plugin_names",
]


class Kind(enum.StrEnum):
    """The kinds of component a generated plugin registers."""

    COLLECTOR = "collector"
    NOTIFIER = "notifier"
    AUTHENTICATOR = "authenticator"
    STORAGE = "storage"


class ScaffoldError(ValueError):
    """The project cannot be generated: a bad name or an occupied directory."""


class BadNameError(ScaffoldError):
    """The name is not a usable distribution or package name."""


_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
_PREFIX = "lunasentri-"
_RESERVED = frozenset({"lunasentri", "lunasentri-core"})
_MAX_PLUGIN_NAME = 30
_TEMPLATE_SUFFIX = ".tmpl"


@attrs.frozen
class PluginNames:
    """Every name the generated project uses, derived from the one given."""

    distribution: str
    """The project's name on PyPI, as given: ``lunasentri-tcp-check``."""
    package: str
    """The import package: ``lunasentri_tcp_check``."""
    plugin: str
    """Entry point and component name, the ``[plugins.<name>]`` table: ``tcp_check``."""
    scheme: str
    """A storage backend's URL scheme (no ``_`` allowed there): ``tcp-check``."""
    classes: str
    """The prefix of the generated class names: ``TcpCheck``."""


def plugin_names(name: str) -> PluginNames:
    """Check ``name`` and derive the other names from it; raise :class:`ScaffoldError`.

    ``name`` is the distribution's name: lower-case letters and digits in words
    joined by single ``-`` (or ``_``), starting with a letter. The ``lunasentri-``
    prefix, recommended for discoverability, is left out of the plugin's name.
    """
    if not _NAME.match(name):
        hint = ""
        if name.lower() != name and _NAME.match(name.lower()):
            hint = f" (use lower case: {name.lower()!r})"
        raise BadNameError(
            f"{name!r} is not a valid plugin distribution name{hint}: use lower-case letters "
            "and digits in words joined by single hyphens, starting with a letter, "
            "e.g. 'lunasentri-tcpcheck'"
        )
    distribution = name.replace("_", "-")
    if distribution in _RESERVED:
        raise BadNameError(f"{name!r} is LunaSentri's own name; name the plugin after what it does")
    package = distribution.replace("-", "_")
    stem = distribution.removeprefix(_PREFIX)
    plugin = stem.replace("-", "_")
    if keyword.iskeyword(package) or not package.isidentifier():
        raise BadNameError(f"{name!r} gives the package name {package!r}, a Python keyword")
    if package in sys.stdlib_module_names:
        raise BadNameError(
            f"{name!r} gives the package name {package!r}, which would shadow the standard "
            "library's module of that name"
        )
    if len(plugin) > _MAX_PLUGIN_NAME:
        # Every name in the generated code derives from it; longer ones make long lines.
        raise BadNameError(
            f"{name!r} gives the plugin name {plugin!r}, longer than {_MAX_PLUGIN_NAME} characters"
        )
    classes = "".join(word.capitalize() for word in plugin.split("_"))
    if classes[0].isdigit():
        raise BadNameError(f"{name!r} gives the plugin name {plugin!r}, which starts with a digit")
    return PluginNames(
        distribution=distribution,
        package=package,
        plugin=plugin,
        scheme=stem,
        classes=classes,
    )


def check_not_installed(names: PluginNames) -> None:
    """Refuse names taken in this environment: the package would shadow an installed
    module, or the plugin's name would clash with an installed plugin's.
    """
    if importlib.util.find_spec(names.package) is not None:
        raise BadNameError(
            f"the package name {names.package!r} is taken by an installed module; "
            "choose another name"
        )
    for entry_point in importlib.metadata.entry_points(group="lunasentri", name=names.plugin):
        owner = entry_point.dist.name if entry_point.dist is not None else "another distribution"
        raise BadNameError(
            f"a plugin named {names.plugin!r} is already installed (from {owner}); "
            "choose another name"
        )


def core_requirement(version: str | None = None) -> str:
    """The range of ``lunasentri-core`` a new plugin depends on, from ``version``.

    The hook API is versioned with the core's minor version while it is 0.x and
    with its major version from 1.0: ``0.1.0`` gives ``>=0.1,<0.2``, ``1.3.2``
    gives ``>=1.3,<2``. ``version`` defaults to the installed core's.
    """
    version = version or importlib.metadata.version("lunasentri-core")
    match = re.match(r"^(\d+)\.(\d+)", version)
    if match is None:
        raise ScaffoldError(f"cannot read a version from {version!r}")
    major, minor = int(match[1]), int(match[2])
    upper = f"0.{minor + 1}" if major == 0 else str(major + 1)
    return f"lunasentri-core>={major}.{minor},<{upper}"


def generate(
    name: str,
    kind: Kind,
    directory: Path | None = None,
    *,
    core_version: str | None = None,
) -> list[Path]:
    """Write a new plugin project of ``kind`` named ``name`` into ``directory``.

    ``directory`` defaults to ``./<name>``; it must not exist or be empty. Returns
    the files written, relative to ``directory``. Raises :class:`ScaffoldError`
    before writing anything when the name or the directory is unusable.
    """
    names = plugin_names(name)
    check_not_installed(names)
    target = Path(name) if directory is None else directory
    _check_directory(target)
    values = _values(names, kind, core_requirement(core_version))
    rendered = dict(_render(kind, names, values))
    created = not target.exists()
    try:
        for relative, text in rendered.items():
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8", newline="\n")
    except OSError as error:
        # Leave nothing half-written behind: the directory was new or empty.
        if created:
            shutil.rmtree(target, ignore_errors=True)
        else:
            for child in target.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        raise ScaffoldError(f"cannot write {target}: {error.strerror or error}") from None
    return sorted(Path(relative) for relative in rendered)


def _check_directory(target: Path) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise ScaffoldError(f"{target} exists and is not a directory; choose another --dir")
    if any(target.iterdir()):
        raise ScaffoldError(
            f"directory {target} exists and is not empty; choose another --dir "
            "(nothing was written)"
        )


_DESCRIPTIONS = {
    Kind.COLLECTOR: "A LunaSentri collector: the size and use of file systems (a starting point).",
    Kind.NOTIFIER: "A LunaSentri notifier: posts notifications as JSON to an HTTP endpoint.",
    Kind.AUTHENTICATOR: "A LunaSentri authenticator: users named by a trusted proxy's header.",
    Kind.STORAGE: "A LunaSentri storage backend: the core's SQL storage in a SQLite file.",
}


def _values(names: PluginNames, kind: Kind, requirement: str) -> dict[str, str]:
    return {
        "description": _DESCRIPTIONS[kind],
        "distribution": names.distribution,
        "package": names.package,
        "plugin": names.plugin,
        "PLUGIN": names.plugin.upper(),
        "scheme": names.scheme,
        "Class": names.classes,
        "kind": kind.value,
        "core_requirement": requirement,
    }


def _render(kind: Kind, names: PluginNames, values: dict[str, str]) -> Iterator[tuple[str, str]]:
    root = files(__name__).joinpath("templates")
    chosen: dict[str, Traversable] = {}
    fragments: dict[str, str] = {}
    for layer in ("common", kind.value):
        for relative, resource in _walk(root.joinpath(layer), PurePosixPath()):
            if relative.name.startswith("_") and not relative.name.startswith("__"):
                fragments[relative.name.removesuffix(_TEMPLATE_SUFFIX).lstrip("_")] = (
                    resource.read_text(encoding="utf-8")
                )
            else:
                chosen[str(relative)] = resource
    # Fragments may use the same placeholders as the files they go into.
    values = {**values, **{key: _fill(text, values, key) for key, text in fragments.items()}}
    for name, resource in sorted(chosen.items()):
        text = resource.read_text(encoding="utf-8")
        path = name.replace("__package__", names.package).replace("__plugin__", names.plugin)
        if path.endswith(_TEMPLATE_SUFFIX):
            path, text = path.removesuffix(_TEMPLATE_SUFFIX), _fill(text, values, name)
        # Dot files would be hidden in the package's own tree; "dot-" stands for the dot.
        path = "/".join(
            "." + part.removeprefix("dot-") if part.startswith("dot-") else part
            for part in path.split("/")
        )
        yield path, text


def _walk(node: Traversable, prefix: PurePosixPath) -> Iterator[tuple[PurePosixPath, Traversable]]:
    for child in node.iterdir():
        if child.name == "__pycache__":
            continue
        if child.is_dir():
            yield from _walk(child, prefix / child.name)
        else:
            yield prefix / child.name, child


def _fill(text: str, values: dict[str, str], where: str) -> str:
    try:
        return string.Template(text).substitute(values)
    except (KeyError, ValueError) as error:  # a defect of the templates, not of the input
        raise RuntimeError(f"template {where}: {error!r}") from error
