"""Plugin registration only: the harness lives in tests/harness/."""

pytest_plugins = [
    "tests.harness.artifacts",
    "tests.harness.broker",
    "tests.harness.redis_server",
    "tests.harness.redis_cluster",
    "tests.harness.workers",
    "tests.harness.aof_redis",
    "tests.harness.worker_group",
]
