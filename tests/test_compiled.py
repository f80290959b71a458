"""The optional mypyc build (:mod:`sidecar.compiled`): its one list of modules, and what a
process says it runs.

``scripts/test`` runs the suite pure (``SIDECAR_EXPECT_COMPILED=0``), then the hot path's
tests against a compiled copy of the package (``=1``, :mod:`tests.compiled_run`). These
tests hold in both runs and check that each is the build it claims to be, down to a
served child process (which inherits the compiled copy through ``PYTHONPATH``).
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from sidecar import __version__, compiled
from tests.harness import running_upstream
from tests.serve_process import running_serve

# "1": every listed module must be compiled; "0": none may be; unset: either, never a mix.
EXPECT = {"1": "mypyc", "0": "no"}.get(os.environ.get("SIDECAR_EXPECT_COMPILED", ""))


def test_every_listed_module_is_a_module_of_the_package() -> None:
    assert len(set(compiled.MODULES)) == len(compiled.MODULES)
    for module in compiled.MODULES:
        assert module.startswith("sidecar."), module
        assert compiled.source_path(module).is_file(), module
    assert compiled.GROUP.startswith("sidecar.")
    assert compiled.GROUP not in compiled.MODULES


def test_this_process_runs_the_build_the_run_expects() -> None:
    for module in compiled.MODULES:
        importlib.import_module(module)
    state = compiled.state()
    assert state.label != "partial", state.describe()
    if EXPECT == "no":
        assert state.label == "no", (
            f"the pure run found the hot path {state.describe()}: an in-place build "
            "(scripts/compile) is in this checkout; scripts/compile --clean removes it"
        )
    elif EXPECT is not None:
        assert state.label == EXPECT, state.describe()
    for module in compiled.MODULES:
        file = str(sys.modules[module].__file__)
        assert file.endswith(tuple(EXTENSION_SUFFIXES)) == (state.label == "mypyc"), file


def test_every_module_of_the_package_imports() -> None:
    """Against the compiled build this is the check that no interpreted module subclasses
    a compiled class (mypyc refuses that at import) or is otherwise at odds with one, also
    the modules the compiled run's tests do not reach (the admin API, forward-auth...)."""
    import sidecar

    names = [
        m.name
        for m in pkgutil.walk_packages(sidecar.__path__, "sidecar.")
        if m.name != "sidecar.__main__"  # runs the command line
    ]
    assert "sidecar.admin.api" in names
    for name in names:
        importlib.import_module(name)


def test_the_label_names_a_partial_build() -> None:
    one, rest = compiled.MODULES[0], compiled.MODULES[1:]
    assert compiled.CompiledState(compiled.MODULES, ()).label == "mypyc"
    assert compiled.CompiledState((), compiled.MODULES).label == "no"
    partial = compiled.CompiledState(rest, (one,))
    assert partial.label == "partial"
    assert one in partial.describe()


def test_the_version_names_the_build() -> None:
    """``sidecar --version`` (a child process, as an operator runs it) names the build this
    process runs."""
    expected = compiled.state().describe()
    version = subprocess.run(
        [sys.executable, "-m", "sidecar", "--version"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert version.stdout.strip() == f"sidecar {__version__}; hot path {expected}"


async def test_the_start_up_line_names_the_build(tmp_path: Path) -> None:
    """A served child process logs which build it runs: the same as this process."""
    expected = compiled.state().describe()
    async with running_upstream() as upstream, running_serve(tmp_path, upstream.url) as served:
        pass
    messages = [json.loads(line).get("msg") for line in served.logs()]
    assert f"hot path: {expected}" in messages, messages
