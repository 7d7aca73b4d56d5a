"""Dashboard and read API server."""
