"""setuptools' entry point; the project's metadata is in pyproject.toml.

``SIDECAR_COMPILE=1`` compiles the proxy's hot path (``sidecar.compiled.MODULES``) with
mypyc into C extensions that sit beside their .py files:

    SIDECAR_COMPILE=1 pip install .            # a compiled wheel (the Docker image)
    scripts/compile                            # in place, in a checkout

Without it (the default) the build is pure Python, and so is ``pip install -e .`` always.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent


def _listed(name: str) -> object:
    """A constant of sidecar/compiled.py, read from its syntax tree: the package's own
    imports need its dependencies, which a build may not have yet."""
    tree = ast.parse((HERE / "sidecar" / "compiled.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                assert node.value is not None
                return ast.literal_eval(node.value)
    raise LookupError(f"sidecar/compiled.py defines no {name}")


def _glibc_at_least(major: int, minor: int) -> bool:
    """Whether this machine's C library is glibc ``major.minor`` or newer."""
    try:
        name, _, version = (os.confstr("CS_GNU_LIBC_VERSION") or "").partition(" ")
        found = tuple(int(part) for part in version.split(".")[:2])
    except (ValueError, OSError):  # not glibc (no such name), or not a version we read
        return False
    return name == "glibc" and found >= (major, minor)


def _hidden(extensions: list[Extension]) -> list[Extension]:
    """mypyc's extensions compiled with ``-fvisibility=hidden`` (GCC and Clang): their one
    entry point each is ``PyInit_*`` (``PyMODINIT_FUNC`` exports it whatever the default),
    and the per-module shims reach the shared library through capsules, never through its
    symbols. Left to the default, the library exports its ~3,600 functions: a dynamic symbol
    table, string table and hash table (the first segment 406 KB -> 27 KB), mapped and
    resident in every process, and a call between two of them goes through the PLT, as
    one that may be interposed, so it is never inlined. Hidden, GCC inlines them (the text
    1.78 -> 2.10 MB; the mapped library 2.91 -> 2.83 MB in all). Same source, same
    behaviour. ``setup.py`` is each extension's dependency (see :func:`_linked`)."""
    if sys.platform == "win32":
        return extensions
    for ext in extensions:
        ext.extra_compile_args = [*ext.extra_compile_args, "-fvisibility=hidden"]
        _rebuilt_when_setup_changes(ext)
    return extensions


def _rebuilt_when_setup_changes(ext: Extension) -> None:
    """``setup.py`` made one of ``ext``'s dependencies, so that a cached build
    (``scripts/compile --into``) is compiled and linked again when its flags here change."""
    if "setup.py" not in ext.depends:
        ext.depends = [*ext.depends, "setup.py"]


def _linked(extensions: list[Extension]) -> list[Extension]:
    """mypyc's extensions linked with ``-z pack-relative-relocs`` (DT_RELR) where the
    building machine's glibc is 2.36 or newer, as the Docker image's is (its build stage is
    its runtime's image): the shared library's ~7,000 relative relocations then take 3.5 KB
    instead of 168 KB, pages of the mapped file that every process (each worker) keeps
    resident, whatever its traffic: the library's mapping 2.23 -> 2.09 MiB resident in a
    served process (``/proc/PID/smaps``; idle and with 1,000 connections alike). The code
    is unchanged.
    ``setup.py`` is each extension's dependency, so that a cached build
    (``scripts/compile --into``) is linked again when this changes."""
    if not sys.platform.startswith("linux") or not _glibc_at_least(2, 36):
        return extensions
    for ext in extensions:
        # A fresh list each: mypycify may give its extensions one list object.
        ext.extra_link_args = [*ext.extra_link_args, "-Wl,-z,pack-relative-relocs"]
        _rebuilt_when_setup_changes(ext)
    return extensions


if os.environ.get("SIDECAR_COMPILE") == "1":
    # mypy brings mypyc; build_support/backend.py asks pip for it (with the packages it
    # type-checks the sources against) when the build is isolated.
    from mypyc.build import mypycify

    modules, group = _listed("MODULES"), _listed("GROUP")
    if not isinstance(modules, tuple) or not isinstance(group, str):
        raise TypeError("sidecar/compiled.py: MODULES is a tuple of names, GROUP a name")
    os.chdir(HERE)  # mypy names a module by its path: sidecar/web/lean.py -> sidecar.web.lean
    paths = ["/".join(m.split(".")) + ".py" for m in modules]
    setup(ext_modules=_linked(_hidden(mypycify(paths, opt_level="3", group_name=group))))
else:
    setup()
