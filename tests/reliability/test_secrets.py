"""Secrets never show in the settings echo (printed at every start-up) or in repr."""

from __future__ import annotations

from trapline.services.settings import Settings

SECRETS = {
    "kafka_sasl_password": "kafka-pw-6f1c2e",
    "s3_access_key_id": "AKIA-test-9d8e7f",
    "s3_secret_access_key": "s3-secret-b4a3c2",
}


def test_settings_echo_and_repr_mask_every_secret():
    settings = Settings(kafka_sasl_username="trap", **SECRETS)
    shown = f"{settings.echo()} {settings!r} {settings}"
    for name, value in SECRETS.items():
        assert value not in shown, name
        assert settings.echo()[name] == "**********"
    assert settings.echo()["kafka_sasl_username"] == "trap"  # not a secret: shown
    assert settings.kafka_security()["sasl_plain_password"] == SECRETS["kafka_sasl_password"]
