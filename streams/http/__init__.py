"""The HTTP API on the worker: views, OpenAPI and the dashboard."""
