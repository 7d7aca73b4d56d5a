"""The bottom layer under streams, producers and consumers: settings helpers, logging, Redis, Kafka admin, clock."""
