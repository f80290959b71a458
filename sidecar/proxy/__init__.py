"""The proxy listener's hot path: gateway (routing), forward (header policy and relay),
the upstream pool, path rules, identity header templates and the WebSocket relay."""
