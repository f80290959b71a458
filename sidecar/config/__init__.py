"""Configuration: the YAML file parsed once into frozen dataclasses.

``options`` holds the dataclasses (each checks its own invariants), ``model`` the loader,
``reader`` walks raw YAML collecting every error with its path, ``values`` and
``durations`` parse the scalar kinds. Import the public names from here.
"""

from sidecar.config.model import (
    DEFAULT_HEADERS,
    ConfigError,
    LoadedConfig,
    load_config,
    parse_config,
    read_config,
)
from sidecar.config.options import (
    DEFAULT_EXPIRY,
    LINK_TYPES,
    MAX_EXPIRY,
    AdminConfig,
    Config,
    ForwardAuthConfig,
    LinksConfig,
    ProxyConfig,
    RoleConfig,
    SessionConfig,
)
from sidecar.config.store import StoreConfig
from sidecar.config.values import Network

__all__ = [
    "DEFAULT_EXPIRY",
    "DEFAULT_HEADERS",
    "LINK_TYPES",
    "MAX_EXPIRY",
    "AdminConfig",
    "Config",
    "ConfigError",
    "ForwardAuthConfig",
    "LinksConfig",
    "LoadedConfig",
    "Network",
    "ProxyConfig",
    "RoleConfig",
    "SessionConfig",
    "StoreConfig",
    "load_config",
    "parse_config",
    "read_config",
]
