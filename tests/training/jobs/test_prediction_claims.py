"""training/jobs/prediction_claims.py on a real Redis: one owner per (project, version, task),
claims that expire, and many writers racing for the same tasks."""

from __future__ import annotations

import threading
import time

from training.jobs.prediction_claims import PREDICT_OWNER, REFRESH_OWNER, PredictionClaims


def test_the_first_writer_owns_a_task_and_the_second_learns_who(redis_conn):
    claims = PredictionClaims(redis_conn)
    refresh = f"{REFRESH_OWNER}job-1"

    first = claims.claim("3", "v1", [10, 11], owner=refresh, ttl_s=60)
    second = claims.claim("3", "v1", [11, 12], owner=PREDICT_OWNER, ttl_s=60)

    assert first == {10: refresh, 11: refresh}
    assert second == {11: refresh, 12: PREDICT_OWNER}
    # another version, another project: separate claims
    assert claims.claim("3", "v2", [11], owner=PREDICT_OWNER, ttl_s=60) == {11: PREDICT_OWNER}
    assert claims.claim("4", "v1", [11], owner=PREDICT_OWNER, ttl_s=60) == {11: PREDICT_OWNER}


def test_an_owner_claiming_again_still_owns_its_tasks(redis_conn):
    claims = PredictionClaims(redis_conn)
    claims.claim("3", "v1", [1], owner=PREDICT_OWNER, ttl_s=60)

    assert claims.claim("3", "v1", [1, 1], owner=PREDICT_OWNER, ttl_s=60) == {1: PREDICT_OWNER}


def test_a_released_or_expired_claim_is_free_again(redis_conn):
    claims = PredictionClaims(redis_conn)
    claims.claim("3", "v1", [1], owner="refresh:a", ttl_s=60)
    claims.claim("3", "v1", [2], owner="refresh:a", ttl_s=1)

    claims.release("3", "v1", 1)
    time.sleep(1.5)  # Redis expires the 1 s claim

    assert claims.claim("3", "v1", [1, 2], owner="refresh:b", ttl_s=60) == {
        1: "refresh:b",
        2: "refresh:b",
    }
    assert 0 < redis_conn.ttl("videoloop:claim:3:v1:1") <= 60


def test_racing_writers_get_exactly_one_owner_per_task(redis_conn):
    claims = PredictionClaims(redis_conn)
    tasks = list(range(200))
    won: dict[str, set[int]] = {}
    start = threading.Barrier(4)

    def writer(name: str) -> None:
        start.wait()
        owners = claims.claim("3", "v1", tasks, owner=name, ttl_s=60)
        won[name] = {t for t, owner in owners.items() if owner == name}

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert sorted(t for mine in won.values() for t in mine) == tasks
