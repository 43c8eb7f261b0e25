"""Label Studio tasks in, Label Studio predictions out, through the one prediction path.

The model comes from the process's ModelServer (backend/serving.py); fetching, decoding,
batching and scoring are training/model/inference.py's; the JSON is
training/labelstudio/results.py's. What is left here is what only /predict knows: the task
dicts Label Studio sends, and that every task gets an entry, in order (Label Studio stores
nothing when the counts differ).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from backend.serving import ModelServer
from training.labelstudio.labelconfig import VideoControls
from training.labelstudio.results import empty_prediction, fillable_controls, video_prediction
from training.model.inference import Failure, predict_clips
from training.settings import Settings
from training.versions.store import NO_MODEL_VERSION
from training.video.clip import Clip, SamplingConfig
from training.video.decoder import sample_clip
from training.video.media import MediaError, MediaResolver, get_video_url
from training.warn_once import WarnOnce

log = logging.getLogger(__name__)


class TaskPredictor:
    """Predicts a request's tasks with the project's loaded model.

    Args:
        server: which model each project serves.
        settings: decode_threads, uncertainty_measure and the media settings.
        media: resolves video references (default: MediaResolver.from_settings).
    """

    def __init__(
        self, server: ModelServer, settings: Settings, media: MediaResolver | None = None
    ) -> None:
        self.server = server
        self.settings = settings
        self.media = media or MediaResolver.from_settings(settings)
        self._threads = max(1, settings.decode_threads)
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="decode")
        self._warn_once = WarnOnce(log)

    def predict(self, project: str, tasks: Sequence[object], controls: VideoControls) -> list[dict]:
        """One prediction per task, in order; a task whose video fails gets an empty one."""
        model = self.server.get_model(project)
        if model is None:
            return [empty_prediction(NO_MODEL_VERSION) for _ in tasks]
        if not fillable_controls(model, controls):
            self._warn_once(
                ("no overlap", project, model.version, controls),
                "project %s: version %s (labels %s, timeline labels %s) fills no control of "
                "the config (choices %s, timeline %s)",
                project,
                model.version,
                model.labels,
                model.timeline_labels,
                list(controls.choice_values),
                list(controls.timeline.labels) if controls.timeline else None,
            )
            return [empty_prediction(model.version) for _ in tasks]
        sources = [functools.partial(self._clip, task, controls, model.sampling) for task in tasks]
        window = max(2 * model.batch_size, 2 * self._threads)
        results = [empty_prediction(model.version) for _ in tasks]
        for i, outcome in predict_clips(model, sources, self._pool, window=window):
            if isinstance(outcome, Failure):
                log.warning(
                    "project %s task %s: no prediction: %s",
                    project,
                    _task_id(tasks[i]),
                    outcome.reason,
                )
                continue
            results[i] = video_prediction(
                outcome,
                controls,
                frame_rate=controls.task_frame_rate(_task_data(tasks[i])),
                measure=self.settings.uncertainty_measure,
            )
        return results

    def _clip(self, task: object, controls: VideoControls, sampling: SamplingConfig) -> Clip:
        """Fetch and sample one task's video (runs on the decode pool)."""
        data = _task_data(task)
        if data is None:
            raise MediaError("task has no data")
        url = get_video_url(data, controls.video_value_key)
        path = self.media.resolve(url, task_id=_task_id(task))
        return sample_clip(path, sampling)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _task_id(task: object) -> object:
    return task.get("id") if isinstance(task, Mapping) else None


def _task_data(task: object) -> Mapping | None:
    data = task.get("data") if isinstance(task, Mapping) else None
    return data if isinstance(data, Mapping) else None
