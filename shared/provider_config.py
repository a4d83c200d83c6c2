"""Provider credentials and endpoints, under the names each provider's own tools use.

Secrets are ``SecretStr``: they print as ``**********`` in logs, reprs and errors.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.catalog import ModelSpec
from shared.settings import refused


def key_hosts_variable(family: str) -> str:
    """The setting naming the hosts, beyond its endpoint, a family's key may go to."""
    return f"{'AWS' if family == 'bedrock' else family.upper()}_KEY_HOSTS"


class ProviderSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, hide_input_in_errors=True)

    openai_api_key: SecretStr | None = None
    openai_base_url: str = "https://api.openai.com/v1"

    anthropic_api_key: SecretStr | None = None
    anthropic_base_url: str = "https://api.anthropic.com"

    gemini_api_key: SecretStr | None = None
    gemini_base_url: str = "https://generativelanguage.googleapis.com"

    mistral_api_key: SecretStr | None = None
    mistral_base_url: str = "https://api.mistral.ai/v1"

    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    aws_region: str | None = Field(default=None, alias="AWS_REGION")
    aws_default_region: str | None = Field(default=None, alias="AWS_DEFAULT_REGION")
    bedrock_endpoint_url: str | None = None

    llm_engine_base_url: str | None = None
    llm_engine_api_key: SecretStr | None = None

    # The hosts, beyond its family's configured endpoint, a family's key may be sent to (a model's
    # catalog base_url elsewhere is refused, or called without the key where the family can be),
    # comma-separated: OPENAI_KEY_HOSTS, ANTHROPIC_KEY_HOSTS, GEMINI_KEY_HOSTS, MISTRAL_KEY_HOSTS,
    # AWS_KEY_HOSTS (Bedrock's credentials), LLM_ENGINE_KEY_HOSTS.
    openai_key_hosts: str = ""
    anthropic_key_hosts: str = ""
    gemini_key_hosts: str = ""
    mistral_key_hosts: str = ""
    aws_key_hosts: str = ""
    llm_engine_key_hosts: str = ""

    # Upstream timeouts (seconds), the same for every family.
    provider_connect_timeout: float = Field(default=10.0, alias="CHATFLEET_PROVIDER_CONNECT_TIMEOUT")
    provider_first_token_timeout: float = Field(default=120.0, alias="CHATFLEET_PROVIDER_FIRST_TOKEN_TIMEOUT")
    provider_idle_timeout: float = Field(default=60.0, alias="CHATFLEET_PROVIDER_IDLE_TIMEOUT")

    @field_validator("*", mode="before")
    @classmethod
    def _strip(cls, value: Any, info: ValidationInfo) -> Any:
        """A key read from a file or pasted often ends in a newline or space: HTTP refuses such
        a header, and a blank key is no key."""
        assert info.field_name is not None  # a field validator: always called for a field
        if isinstance(value, str) and cls.model_fields[info.field_name].annotation == SecretStr | None:
            value = value.strip()
            return value or None
        return value

    def secret_values(self) -> list[str]:
        """Every configured credential, to be masked wherever it could be written."""
        return [value.get_secret_value() for name, value in self if isinstance(value, SecretStr)]

    def key_hosts(self, family: str, configured: str | None) -> set[str]:
        """The hosts ``family``'s key may go to: its configured endpoint's, and those named."""
        named = getattr(self, key_hosts_variable(family).lower(), "")
        hosts = {h.strip().lower() for h in named.split(",") if h.strip()}
        if configured:
            hosts.add((urlsplit(configured).hostname or "").lower())
        return hosts

    @property
    def bedrock_region(self) -> str:
        return self.aws_region or self.aws_default_region or "us-east-1"

    def missing_for(self, spec: ModelSpec) -> str | None:
        """What must be set before ``spec`` (a catalog ModelSpec) can be served, or None."""
        if spec.family == "local":
            return None
        if spec.family == "llm_engine" and spec.base_url:
            return None
        return self.missing_setting(spec.family)

    def missing_setting(self, family: str) -> str | None:
        """The environment variable(s) to set before ``family`` can be called, or None."""
        if family == "openai" and self.openai_api_key is None:
            return "OPENAI_API_KEY"
        if family == "anthropic" and self.anthropic_api_key is None:
            return "ANTHROPIC_API_KEY"
        if family == "gemini" and self.gemini_api_key is None:
            return "GEMINI_API_KEY"
        if family == "mistral" and self.mistral_api_key is None:
            return "MISTRAL_API_KEY"
        if family == "bedrock" and (self.aws_access_key_id is None or self.aws_secret_access_key is None):
            return "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        if family == "llm_engine" and not self.llm_engine_base_url:
            return "LLM_ENGINE_BASE_URL"
        return None


@lru_cache(maxsize=1)
def get_provider_settings() -> ProviderSettings:
    try:
        return ProviderSettings()
    except ValidationError as exc:
        raise refused(exc) from None
