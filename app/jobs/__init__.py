"""Asynchronous jobs: the SQLite job store, the runner, and what each kind of job does."""
