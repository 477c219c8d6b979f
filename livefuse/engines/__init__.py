"""Building FP16 TensorRT engines ahead of time (``scripts/build_engines.py``): plans, precision
choices, the timing cache. Offline only: the live path never imports this package."""
