"""Slow media never stalls prediction: the real server (gunicorn) with a real model.

Three tasks whose videos trickle one byte every 2 s (a loopback host, allow-listed as a public
one would be) are in flight when an ordinary task is asked for: it is answered at once, from
a pool of its own. The slow request answers at PREDICT_DEADLINE_S with ``[]`` for its three
tasks (Label Studio stores nothing and asks again), not after the downloads' own deadline.
"""

from __future__ import annotations

import shutil
import threading
import time
from urllib.parse import urlsplit

import requests
from fake_label_studio import ScriptedHost

CONFIG = """<View>
  <Video name="video" value="$video" frameRate="25"/>
  <Choices name="direction" toName="video" choice="single">
    <Choice value="left_to_right"/>
    <Choice value="right_to_left"/>
  </Choices>
</View>"""
DEADLINE_S = 6.0


def predict(url: str, tasks: list[dict]) -> requests.Response:
    body = {"tasks": tasks, "project": "1.1700000000", "label_config": CONFIG}
    return requests.post(f"{url}/predict", json=body, timeout=100)


def test_slow_media_leaves_other_requests_answering_and_answers_at_its_deadline(
    tmp_path, trained_model, media_root, make_media_host, start_server
):
    shutil.copytree(trained_model.store_root, tmp_path / "models")
    bucket = make_media_host(media_root)
    slow = ScriptedHost()
    for i in range(3):
        slow.trickle(f"/slow{i}.mp4", total_bytes=100_000, interval_s=2.0)
    allowed = f"{slow.host_port},{urlsplit(bucket.url).netloc}"
    ordinary = [{"id": 9, "data": {"video": f"{bucket.url}/carphone_pristine.mp4"}}]
    try:
        with start_server(
            tmp_path,
            MEDIA_ALLOWED_HOSTS=allowed,
            PREDICT_DEADLINE_S=str(DEADLINE_S),
            DOWNLOAD_DEADLINE_S="120",  # the downloads would outlast the request
            DECODE_THREADS="2",
            THREADS="4",
        ) as server:
            ready = time.monotonic() + 90
            while not isinstance(predict(server.url, ordinary).json()["results"][0], dict):
                assert time.monotonic() < ready, "the model never loaded"  # its first load

            slow_answer: dict = {}

            def ask_slowly() -> None:
                started = time.monotonic()
                tasks = [{"id": i, "data": {"video": f"{slow.url}/slow{i}.mp4"}} for i in range(3)]
                slow_answer["response"] = predict(server.url, tasks)
                slow_answer["seconds"] = time.monotonic() - started

            thread = threading.Thread(target=ask_slowly)
            thread.start()
            deadline = time.monotonic() + 90  # a loaded machine starts them late
            while len(slow.seen) < 2:  # its downloads are in flight (2 decode threads)
                assert time.monotonic() < deadline, "the slow downloads never started"
                time.sleep(0.05)

            started = time.monotonic()
            answer = predict(server.url, ordinary)
            ordinary_s = time.monotonic() - started
            thread.join(60)
            assert not thread.is_alive()
    finally:
        slow.close()

    print(
        f"ordinary /predict during slow media: {ordinary_s:.2f} s; slow request answered "
        f"after {slow_answer['seconds']:.2f} s (deadline {DEADLINE_S} s)"
    )
    assert answer.status_code == 200
    assert answer.json()["results"][0]["result"]  # a real prediction
    assert ordinary_s < 30  # the bound; measured about 1 s
    response = slow_answer["response"]
    assert response.status_code == 200
    assert response.json()["results"] == [[], [], []]  # nothing for Label Studio to store
    assert DEADLINE_S <= slow_answer["seconds"] < DEADLINE_S + 30  # at its deadline
