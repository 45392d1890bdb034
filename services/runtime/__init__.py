"""The runtime every mmserve capability stands on: server start, single-flight executor, health,
errors, config, metrics, model plumbing and media handling. Nothing capability-specific lives here.
"""
