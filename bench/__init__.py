"""Benchmarks of mmserve: one runner, `python -m bench.run` (`make bench`), over the
per-capability modules (vision_bench, t2i_bench, vl_bench, omni_bench, edge_bench,
clients_bench; what they share is in bench.kit and bench.harness), with the pure statistics in
bench.stats and the CPU profile of the served path in bench.profile (`make profile`). Results:
bench/RESULTS.md."""
