"""Room and sale counters: pure roll-up and spike logic, and the Redis gateway that applies them."""
