"""Label Studio's side of the data: its API client, label configs, tasks and result JSON."""
