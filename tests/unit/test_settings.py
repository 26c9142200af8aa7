import pytest
from pydantic import ValidationError

from trapline.services.settings import load_settings


def test_environment_beats_yaml_file_and_flags_beat_both(tmp_path, monkeypatch):
    config = tmp_path / "trapline.yaml"
    config.write_text("detection_threshold: 0.3\nbatch_size: 4\nworkers: 1\n")
    monkeypatch.setenv("TRAPLINE_BATCH_SIZE", "16")
    monkeypatch.delenv("TRAPLINE_CONFIG", raising=False)
    settings = load_settings(config, workers=0)
    assert settings.detection_threshold == 0.3  # from the file
    assert settings.batch_size == 16  # the environment beats the file
    assert settings.workers == 0  # an explicit flag beats both


def test_bad_values_are_refused_with_the_field_name(monkeypatch):
    monkeypatch.delenv("TRAPLINE_CONFIG", raising=False)
    with pytest.raises(ValidationError, match="utc_offset"):
        load_settings(utc_offset="CET")
    with pytest.raises(ValidationError, match="detection_threshold"):
        load_settings(detection_threshold=2)


def test_unknown_keys_in_the_file_are_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("TRAPLINE_CONFIG", raising=False)
    config = tmp_path / "bad.yaml"
    config.write_text("detection_treshold: 0.3\n")
    with pytest.raises(ValidationError, match="detection_treshold"):
        load_settings(config)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml")
