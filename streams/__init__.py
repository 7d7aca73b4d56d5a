"""Faust app and agents: real-time stock, spike counters and conversion metrics in Redis."""
