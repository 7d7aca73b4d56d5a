"""Agents, one module per concern; each exposes ``register(pipeline)``."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streams.app import Pipeline

AGENTS = {"stock": "streams.agents.stock", "counters": "streams.agents.counters"}


def register_all(pipeline: Pipeline) -> None:
    """Register the agents named in FLASHSALE_AGENTS (all by default) and the web pages."""
    for name in pipeline.settings.agents:
        import_module(AGENTS[name]).register(pipeline)
    import_module("streams.web").register(pipeline)
