"""Tokens: keysets (``keys``) and the compact-JWE codec that seals and opens claims (``codec``)."""
