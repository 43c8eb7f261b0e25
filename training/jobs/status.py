"""What ``videoloop status`` and ``GET /training/<project>`` show of a project: one reader, so
the two never disagree."""

from __future__ import annotations

from training.jobs.coordinator import TrainingCoordinator
from training.jobs.refresh_chunks import describe_refresh


def project_state(coordinator: TrainingCoordinator, project: str) -> dict:
    """The training state (pending events, queued and running jobs, last run) and, under
    ``refresh``, the progress of the project's latest refresh split into chunks (None if
    none was).

    Raises:
        redis.RedisError: Redis did not answer.
    """
    state = coordinator.get_state(project)
    state["refresh"] = describe_refresh(coordinator.connection, project)
    return state
