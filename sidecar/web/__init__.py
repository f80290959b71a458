"""The HTTP edge shared by both listeners.

Pages, the access and audit logs, metrics, drain on shutdown, strict JSON bodies.
"""
