"""Deployment: container images, Compose, Kubernetes manifests and the tools that check them."""
