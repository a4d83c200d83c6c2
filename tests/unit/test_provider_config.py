"""Provider credentials as read from the environment (shared/provider_config.py)."""

from __future__ import annotations

from pydantic import SecretStr

from shared.provider_config import ProviderSettings


def test_keys_lose_the_whitespace_around_them_and_a_blank_key_is_none(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-a-file\n")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "  ak-pasted \t")
    monkeypatch.setenv("MISTRAL_API_KEY", " \n")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token\r\n")
    settings = ProviderSettings()
    assert settings.openai_api_key.get_secret_value() == "sk-from-a-file"
    assert settings.anthropic_api_key.get_secret_value() == "ak-pasted"
    assert settings.aws_session_token.get_secret_value() == "token"
    assert settings.mistral_api_key is None
    assert settings.missing_setting("mistral") == "MISTRAL_API_KEY"


def test_every_credential_is_stripped(monkeypatch):
    secrets = [name for name, field in ProviderSettings.model_fields.items() if field.annotation == SecretStr | None]
    assert "openai_api_key" in secrets and "aws_session_token" in secrets
    for name in secrets:
        monkeypatch.setenv(name.upper(), f" {name}\n")
    settings = ProviderSettings()
    assert all(getattr(settings, name).get_secret_value() == name for name in secrets)
