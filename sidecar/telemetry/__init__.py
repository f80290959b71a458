"""Audit events and Prometheus counters: a leaf every layer may import (no aiohttp here)."""
