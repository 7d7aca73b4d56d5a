"""HTTP ingest gateway."""
