"""Which adapter serves which family. Adapters share one HTTP client per worker process."""

from __future__ import annotations

import importlib

from shared.provider_config import ProviderSettings, get_provider_settings
from shared.settings import Settings
from worker.providers.base import Provider
from worker.providers.transport import make_client
from worker.providers.local import LocalProvider

HTTP_FAMILIES = {
    "openai": "worker.providers.openai:OpenAIProvider",
    "anthropic": "worker.providers.anthropic:AnthropicProvider",
    "gemini": "worker.providers.gemini:GeminiProvider",
    "mistral": "worker.providers.mistral:MistralProvider",
    "bedrock": "worker.providers.bedrock:BedrockProvider",
    "llm_engine": "worker.providers.llm_engine:LLMEngineProvider",
}


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

    async def close(self) -> None:
        for provider in self.values():
            await provider.close()
        await self.client.aclose()
