"""training/settings.py: every type of setting read from its environment variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.settings import Settings


@pytest.fixture
def clean_env(monkeypatch):
    names = ("GATE_TOLERANCE", "PROMOTE_ON_START_TRAINING", "REFRESH_ALL_TASKS", "PORT")
    for name in (*names, "UNCERTAINTY_MEASURE", "TRAIN_TEMPORAL", "TRAIN_NETWORK", "ACQUISITION"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_when_nothing_is_set(clean_env):
    settings = Settings.from_env()
    assert settings.gate_tolerance == 0.0 and isinstance(settings.gate_tolerance, float)
    assert settings.promote_on_start_training is False
    assert settings.refresh_all_tasks is False
    assert settings.port == 9090 and isinstance(settings.model_dir, Path)
    assert settings.uncertainty_measure == "least_confidence"
    assert settings.train_temporal == settings.train_network == "auto"
    assert settings.acquisition == "score"


def test_measure_and_temporal_head_are_read_and_checked(clean_env):
    clean_env.setenv("UNCERTAINTY_MEASURE", " Margin")
    clean_env.setenv("TRAIN_TEMPORAL", "attention")
    clean_env.setenv("TRAIN_NETWORK", "grid")
    clean_env.setenv("ACQUISITION", " BADGE")
    settings = Settings.from_env()
    assert (settings.uncertainty_measure, settings.train_temporal) == ("margin", "attention")
    assert settings.train_network == "grid"
    assert settings.acquisition == "badge"


def test_floats_and_switches_are_parsed(clean_env):
    clean_env.setenv("GATE_TOLERANCE", " 0.05 ")
    clean_env.setenv("PROMOTE_ON_START_TRAINING", "Yes")
    clean_env.setenv("REFRESH_ALL_TASKS", "1")
    settings = Settings.from_env()
    assert settings.gate_tolerance == pytest.approx(0.05)
    assert settings.promote_on_start_training is True and settings.refresh_all_tasks is True
    for off in ("0", "false", "NO", "off"):
        clean_env.setenv("PROMOTE_ON_START_TRAINING", off)
        assert Settings.from_env().promote_on_start_training is False


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GATE_TOLERANCE", "five", "GATE_TOLERANCE must be a number"),
        ("PROMOTE_ON_START_TRAINING", "maybe", "PROMOTE_ON_START_TRAINING must be one of"),
        ("PORT", "1.5", "PORT must be an integer"),
        ("UNCERTAINTY_MEASURE", "variance", "UNCERTAINTY_MEASURE: unknown uncertainty measure"),
        ("TRAIN_TEMPORAL", "gru", "TRAIN_TEMPORAL: unknown temporal head 'gru'"),
        ("TRAIN_NETWORK", "resnet", "TRAIN_NETWORK: unknown network 'resnet'"),
        ("LITERT_EXPORT", "int4", "LITERT_EXPORT must be one of auto, off, float, float16"),
        ("SERVING_RUNTIME", "onnx", "SERVING_RUNTIME must be one of tensorflow, litert"),
        ("ACQUISITION", "coreset", "ACQUISITION: unknown acquisition strategy"),
        ("ACQUISITION_FIELD", "data.rank", "ACQUISITION_FIELD must be a plain name"),
        ("ACQUISITION_MC_SAMPLES", "1", "ACQUISITION_MC_SAMPLES 2 or more"),
    ],
)
def test_a_bad_value_names_the_variable(clean_env, name, value, message):
    clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        Settings.from_env()


def test_several_serving_processes_need_redis(clean_env):
    clean_env.setenv("WORKERS", "2")
    clean_env.delenv("REDIS_URL", raising=False)
    with pytest.raises(ValueError, match="WORKERS=2 needs REDIS_URL"):
        Settings.from_env()
    clean_env.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    assert Settings.from_env().workers == 2


@pytest.mark.parametrize(
    ("export", "runtime", "mode"),
    [
        ("auto", "tensorflow", "off"),  # nobody serves the file: no publish pays for it
        ("auto", "litert", "float16"),
        ("dynamic", "tensorflow", "dynamic"),  # asked for: exported whatever serves
        ("off", "litert", "off"),
    ],
)
def test_litert_export_auto_follows_the_serving_runtime(clean_env, export, runtime, mode):
    clean_env.setenv("LITERT_EXPORT", export)
    clean_env.setenv("SERVING_RUNTIME", runtime)
    assert Settings.from_env().litert_export_mode == mode


def test_augmentation_and_pretraining_reach_the_training_config(monkeypatch):
    monkeypatch.setenv("AUGMENT", "Temporal")
    monkeypatch.setenv("PRETRAIN", "order")
    monkeypatch.setenv("PRETRAIN_CLIPS", "50")
    monkeypatch.setenv("TRAIN_MIN_BATCHES", "8")
    monkeypatch.setenv("TRAIN_EPOCHS", "7")
    config = Settings.from_env().train_config(seed=3)
    assert (config.augment, config.augment_temporal) == (False, True)
    assert (config.pretrain, config.pretrain_clips, config.min_batches) == ("order", 50, 8)
    assert (config.epochs, config.seed) == (7, 3)
    assert Settings(augment="none").train_config().augment is False
    default = Settings().train_config()
    assert (default.augment, default.augment_temporal, default.pretrain) == (True, False, "none")
    assert Settings().train_scratch_below == 0  # always fine-tune, as before
    monkeypatch.setenv("TRAIN_SCRATCH_BELOW", "40")
    assert Settings.from_env().train_scratch_below == 40
    assert Settings().train_config().split_fractions(1) == (0.2, 0.15)  # always hold out
    monkeypatch.setenv("TRAIN_ALL_BELOW", "48")
    under = Settings.from_env().train_config()
    assert under.split_fractions(47) == (0.0, 0.0) and under.split_fractions(48) == (0.2, 0.15)
    for name, value, message in (
        ("augment", "spatial,reverse", "AUGMENT: unknown augmentation"),
        ("pretrain", "jigsaw", "PRETRAIN: unknown pretext task"),
        ("train_scratch_below", -1, "TRAIN_SCRATCH_BELOW"),
        ("train_all_below", -1, "TRAIN_ALL_BELOW"),
    ):
        with pytest.raises(ValueError, match=message):
            Settings(**{name: value})
    # no unlabelled task to learn from: refused rather than a run that silently learns nothing
    assert Settings(pretrain_clips=0).pretrain_clips == 0  # both methods off: fine
    for on in ({"pretrain": "order"}, {"pseudo_labels": 1}):
        with pytest.raises(ValueError, match="PRETRAIN_CLIPS=0"):
            Settings(pretrain_clips=0, **on)


def test_windowed_sampling_is_read_and_checked(monkeypatch):
    for name in ("TRAIN_FRAMES", "TRAIN_FRAME_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert Settings.from_env().first_sampling().windowed is False  # default: today's sampling
    monkeypatch.setenv("SAMPLE_FPS", "4")
    monkeypatch.setenv("WINDOW_STRIDE", "4")
    sampling = Settings.from_env().first_sampling()
    assert (sampling.sample_fps, sampling.stride, sampling.frames) == (4.0, 4, 16)
    monkeypatch.setenv("WINDOW_STRIDE", "17")  # longer than a window: samples never read
    with pytest.raises(ValueError, match="WINDOW_STRIDE"):
        Settings.from_env()
    monkeypatch.setenv("WINDOW_STRIDE", "0")
    monkeypatch.setenv("SAMPLE_FPS", "-1")
    with pytest.raises(ValueError, match="SAMPLE_FPS"):
        Settings.from_env()


def test_every_setting_has_a_row_in_the_readme_table():
    # The README's settings table is where operators look: a new variable without a row is
    # a setting nobody finds. Rows may name two variables ("`A` / `B`").
    import re
    from dataclasses import fields
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("| variable | default | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) > 40  # the table itself, not a stray one
    named = {name for cell in rows for name in re.findall(r"`([A-Z0-9_]+)`", cell)}
    missing = [f.name.upper() for f in fields(Settings) if f.name.upper() not in named]
    assert not missing, f"settings without a README row: {missing}"
