"""A JSON Schema as Gemini's Schema (worker/providers/gemini.py): what pydantic and clients write,
in the OpenAPI subset every Gemini model takes."""

from worker.providers.gemini import gemini_schema


def test_refs_const_nullable_and_unknown_keywords():
    schema = {"$defs": {"Address": {"type": "object", "properties": {"city": {"type": "string"}},
                                    "additionalProperties": False}},
              "type": "object", "additionalProperties": False, "$schema": "https://json-schema.org/draft/2020-12/schema",
              "properties": {"home": {"$ref": "#/$defs/Address", "description": "where"},
                             "kind": {"const": "person"}, "nick": {"type": ["string", "null"]},
                             "pick": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
                             "level": {"enum": [1, 2]}},
              "required": ["home"]}
    assert gemini_schema(schema) == {
        "type": "OBJECT", "required": ["home"], "properties": {
            "home": {"type": "OBJECT", "description": "where", "properties": {"city": {"type": "STRING"}}},
            "kind": {"enum": ["person"]}, "nick": {"type": "STRING", "nullable": True},
            "pick": {"anyOf": [{"type": "INTEGER"}, {"type": "STRING"}]}, "level": {"enum": ["1", "2"]}}}


def test_a_recursive_ref_is_unrolled_to_a_bound():
    tree = {"$defs": {"Node": {"type": "object", "properties": {"kids": {"type": "array",
                                                                       "items": {"$ref": "#/$defs/Node"}}}}},
            "$ref": "#/$defs/Node"}
    out = gemini_schema(tree)
    depth = 0
    while "properties" in out:
        out = out["properties"]["kids"]["items"]
        depth += 1
    assert out == {"type": "OBJECT"} and 5 < depth < 30
