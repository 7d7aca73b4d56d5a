"""The stock core: the agent, its batch service, pure decision logic, the Redis store and its Lua."""
