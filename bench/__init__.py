"""Benchmarks of the flashsale pipeline, outside the wheel: ``make bench`` runs ``python -m bench all``."""
