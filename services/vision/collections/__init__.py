"""Persistent, searchable vector collections of the vision service."""
