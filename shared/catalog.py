"""The model catalog: which models exist, who serves them, and what they accept."""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import keys

Family = Literal["openai", "anthropic", "gemini", "mistral", "bedrock", "llm_engine", "local"]

BUILTIN_CATALOG = Path(__file__).with_name("catalog.toml")

# The highest temperature each family's API takes (OpenAI's own scale is 0-2); a model may set
# its own (``max_temperature``).
FAMILY_MAX_TEMPERATURE = {"openai": 2.0, "gemini": 2.0, "mistral": 1.5, "anthropic": 1.0, "bedrock": 1.0,
                          "llm_engine": 2.0, "local": 2.0}


class CatalogError(Exception):
    """The catalog file is unreadable or describes a model badly."""


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    family: Family
    upstream: str
    context_window: int = Field(ge=1)
    max_output: int = Field(ge=1)
    price_input: float = Field(0.0, ge=0)
    price_output: float = Field(0.0, ge=0)
    parameters: tuple[str, ...] = ()
    chat_template: bool = False
    default_max_tokens: int | None = Field(None, ge=1)
    bos_token: str = ""
    eos_token: str = ""
    # Raw-prompt families: the template used when the request carries none.
    template: str | None = None
    # Passed through to the provider as-is (an operator's knob, e.g. a deployment's options).
    extra: dict[str, Any] = Field(default_factory=dict)
    # Where to send the call, overriding the family's configured base URL.
    base_url: str | None = None
    # The upstream deployment (provider key/endpoint) whose limits this model shares;
    # by default the family's.
    deployment: str | None = None
    # The highest temperature the model takes; by default its family's.
    max_temperature: float | None = Field(None, ge=0)

    @property
    def temperature_limit(self) -> float:
        return self.max_temperature if self.max_temperature is not None else FAMILY_MAX_TEMPERATURE[self.family]

    @property
    def deployment_name(self) -> str:
        return self.deployment or self.family

    @property
    def queue(self) -> str:
        return keys.QUEUE_LOCAL if self.family == "local" else keys.QUEUE_INTERACTIVE

    @property
    def raw_prompt(self) -> bool:
        return self.family in ("local", "llm_engine")


class DeploymentLimits(BaseModel):
    """What the provider key behind a deployment allows, for the whole fleet."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)


class Catalog:
    def __init__(self, models: dict[str, ModelSpec], deployments: dict[str, DeploymentLimits] | None = None):
        self.models = models
        self.deployments = deployments or {}

    def deployment_limits(self, spec: ModelSpec) -> DeploymentLimits:
        return self.deployments.get(spec.deployment_name, DeploymentLimits())

    def get(self, model_id: str) -> ModelSpec | None:
        return self.models.get(model_id)

    def __iter__(self):
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"cannot read model catalog {path}: {exc}") from exc
    for table in ("models", "deployments"):
        if not isinstance(data.get(table, {}), dict):
            raise CatalogError(f"{path}: [{table}] must be a table of entries")
    return data


def load_catalog(override_path: str = "") -> Catalog:
    data = _read(BUILTIN_CATALOG)
    entries = dict(data.get("models", {}))
    deployments = dict(data.get("deployments", {}))
    if override_path:
        override = _read(Path(override_path))
        for model_id, fields in override.get("models", {}).items():
            entries[model_id] = {**entries.get(model_id, {}), **fields}
        for name, fields in override.get("deployments", {}).items():
            deployments[name] = {**deployments.get(name, {}), **fields}
    models: dict[str, ModelSpec] = {}
    for model_id, fields in entries.items():
        try:
            models[model_id] = ModelSpec(id=model_id, **fields)
        except (ValidationError, TypeError) as exc:
            raise CatalogError(f"model {model_id!r} in the catalog: {exc}") from exc
    limits: dict[str, DeploymentLimits] = {}
    for name, fields in deployments.items():
        try:
            limits[name] = DeploymentLimits(**fields)
        except (ValidationError, TypeError) as exc:
            raise CatalogError(f"deployment {name!r} in the catalog: {exc}") from exc
    return Catalog(models, limits)


@lru_cache(maxsize=4)
def get_catalog(override_path: str = "") -> Catalog:
    return load_catalog(override_path)
