"""The running system: the service against ports, its adapters (Redis state, Kafka, HTTP, ops) and dev tooling."""
