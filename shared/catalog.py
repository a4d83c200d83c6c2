"""The model catalog: which models exist, who serves them, and what they accept."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import keys

Family = Literal["openai", "anthropic", "gemini", "mistral", "bedrock", "llm_engine", "local"]

#: The families whose APIs fetch an image given by an http(s) URL themselves (the fleet never
#: fetches one: the others take images as data URLs only).
FAMILIES_FETCHING_IMAGES = frozenset({"openai", "anthropic", "mistral"})

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
    price_input: float = Field(default=0.0, ge=0)
    price_output: float = Field(default=0.0, ge=0)
    parameters: tuple[str, ...] = ()
    chat_template: bool = False
    # Whether the model takes images (``image_url`` content parts).
    vision: bool = False
    # Whether the model takes tools and response_format (through its API, or constrained decoding).
    tools: bool = True
    # What the model does: chat (completions, responses) or embedding (POST /v1/embeddings).
    kind: Literal["chat", "embedding"] = "chat"
    # An embedding model's vector length (``dimensions``, where it takes one, asks for fewer).
    dimensions: int | None = Field(default=None, ge=1)
    # The only lengths it takes, where it takes a few (Titan: 256, 512, 1024); empty: up to ``dimensions``.
    dimension_choices: tuple[int, ...] = ()
    default_max_tokens: int | None = Field(default=None, ge=1)
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
    # Several deployments serving the model (keys, regions, providers; ``[deployments.<name>]``):
    # calls are spread across them by weight, and a call that fails on one is made on the next.
    deployments: tuple[str, ...] = ()
    # The highest temperature the model takes; by default its family's.
    max_temperature: float | None = Field(default=None, ge=0)

    @property
    def temperature_limit(self) -> float:
        return self.max_temperature if self.max_temperature is not None else FAMILY_MAX_TEMPERATURE[self.family]

    @property
    def deployment_name(self) -> str:
        """The deployment the model is admitted under (its first, when it has several)."""
        return self.deployments[0] if self.deployments else (self.deployment or self.family)

    @property
    def queue(self) -> str:
        return keys.QUEUE_LOCAL if self.family == "local" else keys.QUEUE_INTERACTIVE

    @property
    def raw_prompt(self) -> bool:
        return self.family in ("local", "llm_engine")


class DeploymentLimits(BaseModel):
    """A provider deployment: what its key allows, for the whole fleet (``rpm``, ``tpm``), and,
    for a model's extra deployments, where and how it is called (each unset field: the model's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    family: Family | None = None
    base_url: str | None = None
    upstream: str | None = None
    # The environment variable holding this deployment's key (default: its family's).
    key_env: str | None = None
    # Its share of the calls, among the model's deployments that are not cooling down.
    weight: float = Field(default=1.0, ge=0)


class Catalog:
    def __init__(self, models: dict[str, ModelSpec], deployments: dict[str, DeploymentLimits] | None = None):
        self.models = models
        self.deployments = deployments or {}

    def deployment_limits(self, spec: ModelSpec) -> DeploymentLimits:
        return self.deployments.get(spec.deployment_name, DeploymentLimits())

    def routes(self, spec: ModelSpec) -> list[tuple[str, ModelSpec, DeploymentLimits]]:
        """Where the model can be called: (deployment name, the model as that deployment serves
        it, the deployment), one per deployment (one, its own, when it names none)."""
        if not spec.deployments:
            return [(spec.deployment_name, spec, self.deployment_limits(spec))]
        out = []
        for name in spec.deployments:
            dep = self.deployments.get(name, DeploymentLimits())
            served = spec.model_copy(update={
                "family": dep.family or spec.family, "upstream": dep.upstream or spec.upstream,
                # A deployment's own endpoint is its adapter's (worker/providers/registry.py), with its key.
                "base_url": None if dep.base_url else spec.base_url, "deployment": name, "deployments": ()})
            out.append((name, served, dep))
        return out

    def get(self, model_id: str) -> ModelSpec | None:
        return self.models.get(model_id)

    def only(self, model_ids: frozenset[str]) -> Catalog:
        """The catalog restricted to ``model_ids`` (an API key's models), its deployments kept."""
        return Catalog({k: v for k, v in self.models.items() if k in model_ids}, self.deployments)

    def __iter__(self) -> Iterator[ModelSpec]:
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
    for spec in models.values():
        unknown = [name for name in spec.deployments if name not in limits]
        if unknown:
            raise CatalogError(f"model {spec.id!r} in the catalog names deployments that are not "
                               f"[deployments.<name>] tables: {', '.join(unknown)}")
    return Catalog(models, limits)


@lru_cache(maxsize=4)
def get_catalog(override_path: str = "") -> Catalog:
    return load_catalog(override_path)
