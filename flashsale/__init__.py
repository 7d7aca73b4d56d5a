"""flashsale: the command line, the embedded stack and shared environment helpers."""

__version__ = "0.1.0"
