"""Offline checks of deploy/: composing the kustomizations, validating manifests and the
Compose file against their schemas, linting Dockerfiles, keeping the Envoy config rendered."""
