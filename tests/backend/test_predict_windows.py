"""/predict with a windowed version (SAMPLE_FPS): a long video fetched over HTTP is read
window by window and answered with timeline regions as fine as the sampling rate, the same
regions the shared prediction path gives; a version's sampling comes from its meta.json."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from backend.app import create_app
from training.labelstudio.labelconfig import parse_label_config
from training.labelstudio.results import video_prediction
from training.model.build import build_model
from training.model.config import ModelConfig
from training.model.inference import predict_clips
from training.model.loaded import load_version
from training.settings import Settings
from training.versions.store import MODEL_FILE, ModelStore
from training.video.clip import SamplingConfig
from training.video.synth_long import LONG_LABELS, generate_long_set, read_long_set
from training.video.windows import open_video

TINY = ModelConfig(conv_filters=(8, 8, 8, 8), frame_features=8, lstm_units=8)
WINDOWED = SamplingConfig(frames=8, height=32, width=32, sample_fps=4.0)
CONFIG = """<View>
  <Video name="video" value="$video" frameRate="$fps"/>
  <TimelineLabels name="motion" toName="video">
    <Label value="left_to_right"/><Label value="right_to_left"/>
  </TimelineLabels>
</View>"""


@pytest.fixture(scope="module")
def windowed(tmp_path_factory, make_media_host):
    import keras

    base = tmp_path_factory.mktemp("windows")
    generate_long_set(base / "media", videos=1, seed=8, seconds=(40.0, 40.0), segments=(4, 6))
    video = read_long_set(base / "media")[0]
    keras.utils.set_random_seed(3)
    model = build_model(0, WINDOWED, TINY, timeline_labels=len(LONG_LABELS))
    balance_timeline(model, video.path)
    store = ModelStore(base / "models")

    def write(folder):
        model.save(folder / MODEL_FILE)
        meta = {"labels": [], "timeline_labels": list(LONG_LABELS)}
        return {**meta, "sampling": WINDOWED.to_dict()}

    info = store.publish("1", write, make_current=True)
    host = make_media_host(base / "media")
    return base, video, info, host


def balance_timeline(model, path) -> None:
    """Shift the untrained timeline head's bias so that, on this video, every output is
    picked about as often: its per-sample choice then varies, so the regions do."""
    import numpy as np

    windows = list(open_video(path, WINDOWED).windows())
    probs = model.predict_on_batch(
        {
            "frames": np.stack([w.frames for w in windows]),
            "mask": np.stack([w.mask for w in windows]),
        }
    )["timeline"]
    layer = model.get_layer("timeline")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, bias - np.log(probs.reshape(-1, probs.shape[-1]).mean(axis=0))])


def test_predict_answers_a_long_video_with_windowed_regions(windowed):
    base, video, info, host = windowed
    settings = Settings(
        model_dir=base / "models",
        cache_dir=base / "cache",
        media_allowed_hosts=urlsplit(host.url).netloc,
    )
    app = create_app(settings)
    app.testing = True
    task = {"id": 1, "data": {"video": f"{host.url}/{video.path.name}", "fps": 10}}
    try:
        response = app.test_client().post(
            "/predict",
            json={"tasks": [task], "project": "1.1700000000", "label_config": CONFIG},
        )
    finally:
        app.extensions["videoloop"].close()
    assert response.status_code == 200, response.text
    (answer,) = response.get_json()["results"]

    loaded = load_version(info, batch_size=8)  # the same model, straight through predict_clips
    with ThreadPoolExecutor(1) as pool:
        ((_, outcome),) = predict_clips(loaded, [lambda: open_video(video.path, WINDOWED)], pool)
    assert len(outcome.clip.indices) == 160  # 40 s at 4 samples a second
    expected = video_prediction(outcome, parse_label_config(CONFIG), frame_rate=10.0)
    assert expected is not None and len(expected["result"]) >= 2
    assert answer["model_version"] == info.version
    assert answer["result"] == expected["result"]
    ranges = [r["value"]["ranges"][0] for r in answer["result"]]
    assert all(1 <= r["start"] <= r["end"] <= 400 for r in ranges)
