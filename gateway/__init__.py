"""The Envoy edge in front of the capability services, and the local stack launcher."""
