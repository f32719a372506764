"""Benchmarks. Each one runs against its own ``<DATABASE_URL database>_bench`` database (``bench._django``)."""
