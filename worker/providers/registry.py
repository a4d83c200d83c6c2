"""Which adapter serves which family, or which deployment of a model. Adapters share one HTTP
client per worker process."""

from __future__ import annotations

import importlib
import os
from urllib.parse import urlsplit

from pydantic import SecretStr

from shared.catalog import DeploymentLimits
from shared.provider_config import ProviderSettings, get_provider_settings, key_hosts_variable
from shared.settings import Settings
from worker.providers.base import Provider, ProviderError
from worker.providers.local import LocalProvider
from worker.providers.transport import make_client

HTTP_FAMILIES = {
    "openai": "worker.providers.openai:OpenAIProvider",
    "anthropic": "worker.providers.anthropic:AnthropicProvider",
    "gemini": "worker.providers.gemini:GeminiProvider",
    "mistral": "worker.providers.mistral:MistralProvider",
    "bedrock": "worker.providers.bedrock:BedrockProvider",
    "llm_engine": "worker.providers.llm_engine:LLMEngineProvider",
}


# Each family's settings of its endpoint and its key, which a deployment of its own replaces.
ENDPOINT_SETTINGS = {"openai": ("openai_base_url", "openai_api_key"),
                     "anthropic": ("anthropic_base_url", "anthropic_api_key"),
                     "gemini": ("gemini_base_url", "gemini_api_key"),
                     "mistral": ("mistral_base_url", "mistral_api_key"),
                     "llm_engine": ("llm_engine_base_url", "llm_engine_api_key"),
                     "bedrock": ("bedrock_endpoint_url", None)}


def load_adapter(family: str):
    module, _, name = HTTP_FAMILIES[family].partition(":")
    return getattr(importlib.import_module(module), name)


class Providers(dict):
    """family -> adapter (created on first use), plus the HTTP client they share."""

    def __init__(self, settings: Settings, provider_settings: ProviderSettings | None = None):
        super().__init__()
        self.provider_settings = provider_settings or get_provider_settings()
        self.client = make_client(self.provider_settings)
        self["local"] = LocalProvider(settings)

    def get(self, family: str, default=None) -> Provider | None:
        if family not in self and family in HTTP_FAMILIES:
            self[family] = load_adapter(family)(self.client, self.provider_settings)
        return super().get(family, default)

    def for_deployment(self, name: str, family: str, deployment: DeploymentLimits) -> Provider | None:
        """The adapter of a deployment with an endpoint or a key of its own (the family's adapter
        for one that has neither): its settings are the family's, with its endpoint and key."""
        if not (deployment.base_url or deployment.key_env) or family not in ENDPOINT_SETTINGS:
            return self.get(family)
        cached = super().get(f"deployment:{name}")
        if cached is not None:
            return cached
        url_field, key_field = ENDPOINT_SETTINGS[family]
        update: dict = {}
        if deployment.base_url:
            update[url_field] = deployment.base_url
            if not deployment.key_env and not self._key_may_go(family, url_field, deployment.base_url):
                # The family's key goes only to the hosts it is for, as a model's base_url does.
                variable = key_hosts_variable(family)
                if not load_adapter(family).key_optional:
                    raise ProviderError(f"deployment {name!r} has an endpoint of its own, which this fleet's "
                                        f"{family} key is not for: the operator must give the deployment a "
                                        f"key_env or name its host in {variable}", code="model_unavailable")
                if key_field is not None:
                    update[key_field] = None  # called without the family's key
        if deployment.key_env:
            secret = os.environ.get(deployment.key_env, "").strip()
            if not secret or key_field is None:
                raise ProviderError(f"deployment {name!r} reads its key from {deployment.key_env}, which is not set",
                                    code="model_unavailable")
            update[key_field] = SecretStr(secret)
        adapter = load_adapter(family)(self.client, self.provider_settings.model_copy(update=update))
        self[f"deployment:{name}"] = adapter
        return adapter

    def _key_may_go(self, family: str, url_field: str, url: str) -> bool:
        host = (urlsplit(url).hostname or "").lower()
        return host in self.provider_settings.key_hosts(family, getattr(self.provider_settings, url_field))

    async def close(self) -> None:
        for provider in self.values():
            await provider.close()
        await self.client.aclose()
