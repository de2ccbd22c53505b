"""The service: the batch handler, scorer, learner, CLV versions and queries, against ports (never an adapter)."""
