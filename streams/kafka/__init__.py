"""Kafka: the Faust app wiring (agents, timers), topics, sinks and the batch-delivery transport."""
