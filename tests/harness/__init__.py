"""Test harness: real processes (Tansu, redis-server, Redis Cluster, workers) and their fixtures, as pytest plugins."""
