"""Benchmarks of mmserve (issue 12): one runner, `python -m bench.run` (`make bench`), over the
per-capability modules (vision_bench, t2i_bench, vl_bench, omni_bench, edge_bench and
clients/bench/overhead.py), with the pure statistics in bench.stats and the CPU profile of the
served path in bench.profile (`make profile`). Results: bench/RESULTS.md."""
