"""Room and sale counters: pure roll-up and spike logic, and the Redis store that applies them, with its Lua."""
