"""icefloe's benchmarks: ``python -m benchmarks.run [--smoke] [--out benchmarks/RESULTS.md]``."""
