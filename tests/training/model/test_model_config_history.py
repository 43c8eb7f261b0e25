"""training/model/config.py from_dict and the versions saved before ModelConfig.frame_net and
temporal_kernel existed: they load, serve, and fine-tune as the architecture they were."""

from __future__ import annotations

import numpy as np

from training.learn.config import TrainingRun
from training.learn.fit import warm_start
from training.model.build import build_model
from training.model.config import LEGACY_FIELDS, ModelConfig, first_model_config
from training.model.loaded import load_version
from training.versions.store import MODEL_FILE, ModelStore
from training.video.clip import SamplingConfig

SAMPLING = SamplingConfig(frames=4, height=32, width=32)
V1_META_MODEL = {  # meta.json "model" as versions before issue 15 stored it (tiny sizes)
    "backbone": "small",
    "backbone_weights": None,
    "conv_filters": [8, 8, 8, 8],
    "grid_channels": 8,
    "frame_features": 8,
    "lstm_units": 8,
    "dropout": 0.3,
    "recurrent_dropout": 0.0,
    "frame_differences": True,
    "appearance": "pooled",
    "appearance_dropout": 0.5,
    "pooled_features": True,
    "temporal": "lstm",
    "attention_units": 64,
    "learning_rate": 0.001,
    "clipnorm": 1.0,
    "label_smoothing": 0.1,
}


def test_a_stored_config_without_the_new_fields_is_the_old_architecture():
    config = ModelConfig.from_dict(V1_META_MODEL)
    assert config.frame_net == "grid" and config.temporal_kernel == 0
    assert {k: getattr(config, k) for k in LEGACY_FIELDS} == LEGACY_FIELDS
    assert config.conv_filters == (8, 8, 8, 8)
    # a config stored with the fields keeps them, and to_dict -> from_dict is the identity
    assert ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()
    separable = ModelConfig(frame_net="separable", temporal_kernel=3)
    assert ModelConfig.from_dict(separable.to_dict()) == separable


def test_the_first_default_architecture_is_rebuilt_at_its_size():
    """0.31 M parameters at 16 x 112 x 112 with two classes, as bench/RESULTS.md measured."""
    v1 = {**V1_META_MODEL, "conv_filters": [16, 32, 64, 64], "frame_features": 128}
    v1["lstm_units"] = 128
    model = build_model(2, SamplingConfig(), ModelConfig.from_dict(v1))
    assert model.count_params() == 308402
    assert all(layer.__class__.__name__ != "SeparableConv2D" for layer in model.layers)


def test_an_old_version_serves_and_fine_tunes_as_itself(tmp_path):
    old_config = ModelConfig.from_dict(V1_META_MODEL)
    old = build_model(2, SAMPLING, old_config)
    store = ModelStore(tmp_path / "models")

    def write(folder):
        old.save(folder / MODEL_FILE)
        return {"labels": ["a", "b"], "sampling": SAMPLING.to_dict(), "model": V1_META_MODEL}

    info = store.publish("1", write)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 4, 32, 32, 3), dtype=np.uint8)
    mask = np.ones((3, 4), bool)
    expected = np.asarray(old.predict_on_batch({"frames": frames, "mask": mask})["classes"])
    served = load_version(info, batch_size=2)
    np.testing.assert_allclose(served.predict(frames, mask)["classes"], expected, atol=1e-5)

    # a retrain from it rebuilds the same architecture and copies every layer
    sampling, config = TrainingRun(parent=info).configs()
    assert config == old_config
    child = build_model(2, sampling, config)
    assert warm_start(child, info, ["a", "b"]) == "parent"
    got = np.asarray(child.predict_on_batch({"frames": frames, "mask": mask})["classes"])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_first_model_is_compact_unless_the_project_labels_frames():
    """TRAIN_NETWORK=auto: under 1 % of the origin guide's 22.2 M parameters (at most 222 k at
    16 x 112 x 112, on 4 classes) for a classification project; the wider grid network with a
    bidirectional LSTM for a timeline project; each setting wins over auto."""
    compact = first_model_config(timeline=False, temporal="auto", network="auto")
    assert (compact.frame_net, compact.temporal, compact.lstm_units) == ("separable", "lstm", 64)
    model = build_model(4, SamplingConfig(), compact)
    assert model.count_params() <= 222_000
    assert any(layer.__class__.__name__ == "SeparableConv2D" for layer in model.layers)

    timeline = first_model_config(timeline=True, temporal="auto", network="auto")
    assert (timeline.frame_net, timeline.temporal, timeline.lstm_units) == ("grid", "bilstm", 128)
    chosen = first_model_config(timeline=False, temporal="attention", network="grid")
    assert (chosen.frame_net, chosen.temporal) == ("grid", "attention")
