"""MLflow tracking, one job per module: lock (the SQLite store's writer lock), runs (experiments, the invocation's
parent run, killed runs), tracker (a step's run), offline (the journal a failing store leaves for sync-tracking),
deferred (per-subject jobs' runs, journaled and logged in batches) and lineage (the slice store as dataset inputs)."""
