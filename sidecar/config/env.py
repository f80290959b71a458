"""Options from the environment: ``proxy.upstream`` from ``SIDECAR_PROXY__UPSTREAM``.

``__`` separates levels, names are upper case (:func:`env_name`); a variable's text stands
for the YAML value an option of that kind would hold (:func:`from_env`). The reader
(:mod:`sidecar.config.reader`) consults these for every option it reads.
"""

from __future__ import annotations

import re
from typing import Literal

import yaml

Kind = Literal["text", "bool", "int", "list", "map"]
ENV_PREFIX = "SIDECAR_"
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def env_name(path: str) -> str:
    """``proxy.upstream`` -> ``SIDECAR_PROXY__UPSTREAM``; ``roles.Admin.max_expiry`` ->
    ``SIDECAR_ROLES__ADMIN__MAX_EXPIRY`` (characters a variable name cannot hold become ``_``)."""
    levels = (re.sub(r"[^A-Z0-9_]", "_", level.upper()) for level in path.split("."))
    return ENV_PREFIX + "__".join(levels)


def from_env(text: str, kind: Kind) -> object:
    """An environment string as the YAML value it stands for; left as text when it is not
    one, so the accessor's own message reports it."""
    if kind == "bool" and text.strip().lower() in _TRUE + _FALSE:
        return text.strip().lower() in _TRUE
    if kind == "int" and re.fullmatch(r"\s*-?\d+\s*", text):
        return int(text)
    if kind in ("list", "map"):  # a YAML flow collection: [10.0.0.0/8, 192.168.0.0/16]
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text
    return text
