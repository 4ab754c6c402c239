"""Benchmarks of a source checkout (not installed): run the scripts from the repo root, e.g.
``python bench/fps_memory.py --quick``; the pytest-benchmark suite with ``pytest bench/ --benchmark-only``."""
