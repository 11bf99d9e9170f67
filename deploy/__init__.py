"""Deployment tooling: the `make serve` launcher, the KubeRay manifest generator, monitoring files."""
