"""The adversarial suite: the sidecar attacked from its proxy and admin ports' outside."""
