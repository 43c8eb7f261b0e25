"""Decode many videos into clips on a small thread pool (PyAV releases the GIL while decoding).

Shared by serving (the tasks of one /predict request) and training (a dataset). A video that
cannot be read yields its VideoDecodeError in its slot; the others are still decoded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from training.clipcache import ClipCache
from training.sampler import VideoDecodeError, sample_clip
from training.sampling import Clip, SamplingConfig


def decode_many(
    paths: Sequence[str | os.PathLike],
    sampling: SamplingConfig,
    *,
    threads: int = 2,
    progress: Callable[[int, int], None] | None = None,
    cache: ClipCache | None = None,
) -> list[Clip | VideoDecodeError]:
    """Sample every video; returns a Clip or the VideoDecodeError for each path, in order.

    ``progress(done, total)`` is called after each video, from the calling thread. With a
    ``cache``, clips decoded before (same file content and sampling) are read from it and
    new ones are added; its ``hits``/``misses`` say how many were decoded.
    """

    def one(path: str | os.PathLike) -> Clip | VideoDecodeError:
        try:
            if cache is not None:
                return cache.sample(path, sampling)
            return sample_clip(path, sampling)
        except VideoDecodeError as exc:
            return exc

    results: list[Clip | VideoDecodeError] = []
    total = len(paths)
    if threads <= 1 or total <= 1:
        for path in paths:
            results.append(one(path))
            if progress:
                progress(len(results), total)
        return results
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
        for result in pool.map(one, paths):
            results.append(result)
            if progress:
                progress(len(results), total)
    return results
