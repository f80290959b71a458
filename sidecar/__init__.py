"""sidecar: one-time refer links into sessions for unmodified web apps."""

__version__ = "0.1.0"
