"""``GET /v4/models``: the catalog, and whether each model's provider is configured."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentAccount, ScopedCatalogDep
from shared.provider_config import get_provider_settings

router = APIRouter()


@router.get("/v4/models")
async def list_models(_: CurrentAccount, catalog: ScopedCatalogDep):
    settings = get_provider_settings()
    data = []
    for spec in sorted(catalog, key=lambda s: s.id):
        missing = settings.missing_for(spec)
        data.append({
            "id": spec.id,
            "object": "model",
            "family": spec.family,
            "available": missing is None,
            "missing_setting": missing,
            "context_window": spec.context_window,
            "max_output": spec.max_output,
            "parameters": list(spec.parameters),
            "chat_template": spec.chat_template,
            "price_input_per_million": spec.price_input,
            "price_output_per_million": spec.price_output,
        })
    return {"object": "list", "data": data}
