"""The RQ side: the training coordinator, job entry points, the refresh job, the worker."""
