"""``chatfleet models``: the catalog, and which models this fleet can serve."""

from __future__ import annotations

from client.chat import AsJson
from client.http import api
from client.output import print_json, print_table


def models(as_json: AsJson = False) -> None:
    """The models of the catalog and whether their provider is configured (GET /v4/models)."""
    data = api().get("/v4/models").get("data") or []
    if as_json:
        print_json(data)
        return
    print_table(["id", "family", "available", "missing_setting"],
                [[m.get("id"), m.get("family"), m.get("available"), m.get("missing_setting")] for m in data])


