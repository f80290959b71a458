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
from pathlib import Path

from setuptools import setup

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


if os.environ.get("SIDECAR_COMPILE") == "1":
    # mypy brings mypyc; build_support/backend.py asks pip for it (with the packages it
    # type-checks the sources against) when the build is isolated.
    from mypyc.build import mypycify

    modules, group = _listed("MODULES"), _listed("GROUP")
    if not isinstance(modules, tuple) or not isinstance(group, str):
        raise TypeError("sidecar/compiled.py: MODULES is a tuple of names, GROUP a name")
    os.chdir(HERE)  # mypy names a module by its path: sidecar/web/lean.py -> sidecar.web.lean
    paths = ["/".join(m.split(".")) + ".py" for m in modules]
    setup(ext_modules=mypycify(paths, opt_level="3", group_name=group))
else:
    setup()
