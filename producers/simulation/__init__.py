"""Live-sale simulation: parameters, a seeded plan of events, a reference stock model, a runner."""
