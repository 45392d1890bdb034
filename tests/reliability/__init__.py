"""Reliability and security suites: bad input, faults, load and auth through real servers."""
