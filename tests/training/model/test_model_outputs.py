"""training/model/build.py load_keras_model and training/model/loaded.py: every model has named
outputs, and a classifier saved before that (one plain output) is adapted once, at load."""

from __future__ import annotations

import numpy as np

from training.model.build import build_model, load_keras_model
from training.model.config import ModelConfig
from training.model.embedding import with_embedding
from training.model.loaded import load_version
from training.versions.store import MODEL_FILE, ModelStore
from training.video.clip import SamplingConfig

TINY = ModelConfig(conv_filters=(8, 8, 8, 8), frame_features=8, lstm_units=8)
SAMPLING = SamplingConfig(frames=4, height=32, width=32)


def test_new_models_name_every_output(tmp_path):
    classes = build_model(2, SAMPLING, TINY)
    both = build_model(3, SAMPLING, TINY, timeline_labels=2)
    assert set(classes.output) == {"classes"}
    assert set(both.output) == {"classes", "timeline"}


def test_a_classifier_saved_with_one_plain_output_loads_with_named_outputs(tmp_path):
    import keras

    named = build_model(2, SAMPLING, TINY)
    old = keras.Model(named.input, named.output["classes"], name="cnn_lstm")  # pre-dict format
    store = ModelStore(tmp_path / "models")

    def write(folder):
        old.save(folder / MODEL_FILE)
        return {"labels": ["a", "b"], "sampling": SAMPLING.to_dict()}

    info = store.publish("1", write)
    loaded = load_keras_model(info.model_path)
    assert set(loaded.output) == {"classes"}
    rng = np.random.default_rng(0)
    batch = {
        "frames": rng.integers(0, 255, (3, 4, 32, 32, 3), dtype=np.uint8),
        "mask": np.ones((3, 4), bool),
    }
    expected = np.asarray(old.predict_on_batch(batch))
    np.testing.assert_allclose(loaded.predict_on_batch(batch)["classes"], expected, atol=1e-6)

    served = load_version(info, batch_size=2)  # the serving path adapts the same way
    outputs = served.predict(batch["frames"], batch["mask"])
    assert set(outputs) == {"classes"}
    np.testing.assert_allclose(outputs["classes"], expected, atol=1e-5)


def test_embeddings_come_from_the_same_pass_without_new_weights_even_for_old_models(tmp_path):
    """Loaded with embeddings (the refresh, for acquisition), a version answers the same
    probabilities plus the classifier head's input: the head's weights applied to it give the
    probabilities back. A classifier saved with one plain output gives them too."""
    import keras

    named = build_model(3, SAMPLING, TINY)
    old = keras.Model(named.input, named.output["classes"], name="cnn_lstm")
    store = ModelStore(tmp_path / "models")

    def write(folder):
        old.save(folder / MODEL_FILE)
        return {"labels": ["a", "b", "c"], "sampling": SAMPLING.to_dict()}

    info = store.publish("1", write)
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (3, 4, 32, 32, 3), dtype=np.uint8)
    mask = np.ones((3, 4), bool)
    plain = np.asarray(old.predict_on_batch({"frames": frames, "mask": mask}))
    served = load_version(info, batch_size=2, embeddings=True)
    outputs = served.predict(frames, mask)
    assert set(outputs) == {"classes", "embedding"}
    np.testing.assert_allclose(outputs["classes"], plain, atol=1e-5)
    head = served.head
    assert head is not None and head.rate == TINY.dropout
    logits = outputs["embedding"] @ head.kernel + head.bias
    again = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(again, outputs["classes"], atol=1e-5)
    extended, _ = with_embedding(named)
    assert extended.count_params() == named.count_params()  # no new weights


def test_a_timeline_only_model_loads_with_embeddings_asked_and_has_no_head(tmp_path):
    model = build_model(0, SAMPLING, TINY, timeline_labels=2)
    store = ModelStore(tmp_path / "models")

    def write(folder):
        model.save(folder / MODEL_FILE)
        meta = {"labels": [], "timeline_labels": ["x", "y"], "sampling": SAMPLING.to_dict()}
        return meta

    served = load_version(store.publish("1", write), embeddings=True)
    assert served.head is None
    outputs = served.predict(np.zeros((1, 4, 32, 32, 3), np.uint8), np.ones((1, 4), bool))
    assert set(outputs) == {"timeline"}
