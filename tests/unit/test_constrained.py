"""The raw-prompt families' constrained answers (shared/constrained.py): the schema the answer is
decoded to, what the prompt says, and the answer read back."""

import jsonschema
import orjson

from shared.constrained import PARALLEL_CALLS_AT_MOST, answer_schema, cut_content, prompt_turns, read_answer
from shared.jobspec import Output, Tool, ToolCall, Tools, Turn

WEATHER = Tool("get_weather", {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
               "The weather in a city")
CLOCK = Tool("get_time", {"type": "object", "properties": {}})


def test_required_calls_are_bounded_to_the_tools_and_closed_to_made_up_arguments():
    schema = answer_schema(Tools((WEATHER, CLOCK), "required"), None)
    jsonschema.validate({"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}, schema)
    for bad in ({"tool_calls": []}, {"content": "hi"},
                {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "made_up": 1}}]},
                {"tool_calls": [{"name": "other", "arguments": {}}]},
                {"tool_calls": [{"name": "get_time", "arguments": {}}, {"name": "get_time", "arguments": {}}]}):
        assert not jsonschema.Draft202012Validator(schema).is_valid(bad), bad
    parallel = answer_schema(Tools((WEATHER, CLOCK), "required", parallel=True), None)
    jsonschema.validate({"tool_calls": [{"name": "get_time", "arguments": {}}] * PARALLEL_CALLS_AT_MOST}, parallel)
    assert not jsonschema.Draft202012Validator(parallel).is_valid(
        {"tool_calls": [{"name": "get_time", "arguments": {}}] * (PARALLEL_CALLS_AT_MOST + 1)})


def test_auto_allows_an_answer_and_a_forced_tool_only_itself():
    auto = answer_schema(Tools((WEATHER,), "auto"), Output("json_schema", "p", {"type": "object", "properties": {
        "n": {"type": "integer"}}}))
    jsonschema.validate({"content": {"n": 3}}, auto)
    assert not jsonschema.Draft202012Validator(auto).is_valid({"content": "text"})
    forced = answer_schema(Tools((WEATHER, CLOCK), "required", "get_time"), None)
    assert not jsonschema.Draft202012Validator(forced).is_valid(
        {"tool_calls": [{"name": "get_weather", "arguments": {"city": "x"}}]})
    assert answer_schema(Tools((WEATHER,), "none"), None) is None
    assert answer_schema(None, Output("json_object")) == {"type": "object"}


def test_the_prompt_names_the_functions_and_renders_the_history_as_text():
    call = ToolCall("c1", "get_weather", '{"city":"P"}')
    turns = [Turn("user", "weather?"), Turn("assistant", "", tool_calls=(call,)),
             Turn("tool", "sunny", tool_call_id="c1", name="get_weather")]
    messages = prompt_turns(turns, Tools((WEATHER,), "auto"), None)
    assert messages[0]["role"] == "system"
    assert "get_weather(city: string): The weather in a city" in messages[0]["content"]
    assert orjson.loads(messages[2]["content"]) == {"tool_calls": [{"name": "get_weather", "arguments": {"city": "P"}}]}
    assert messages[3] == {"role": "user", "content": "Result of the function get_weather (call c1): sunny"}
    # A structured answer alone is left to the grammar: nothing is added.
    assert prompt_turns(turns[:1], None, Output("json_object")) == [{"role": "user", "content": "weather?"}]


def test_an_answer_is_read_back_as_calls_or_text_and_a_cut_one_as_none():
    tools = Tools((WEATHER,), "auto")
    answer = read_answer('{"tool_calls": [{"name": "get_weather", "arguments": {"city": "P"}}]}', tools, None)
    assert answer is not None and answer.calls == [("get_weather", '{"city":"P"}')] and answer.content == ""
    calls = [{"name": "f", "arguments": {}}, {"name": "f", "arguments": {}}, {"name": "f", "arguments": {"a": 1}}]
    twice = read_answer(orjson.dumps({"tool_calls": calls}).decode(), tools, None)
    assert twice is not None and twice.calls == [("f", "{}"), ("f", '{"a":1}')]
    answer = read_answer('{"content": "hello"}', tools, None)
    assert answer is not None and answer.content == "hello" and not answer.calls
    assert read_answer('{"tool_calls": [{"name": "get_wea', tools, None) is None
    plain = read_answer('{"a": 1}', None, Output("json_object"))
    assert plain is not None and plain.content == '{"a": 1}'


def test_a_schema_with_defs_keeps_its_refs_once_nested_in_the_answers_schema():
    address = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    person = {"$defs": {"Address": address, "Person": {"type": "object", "properties": {
        "home": {"$ref": "#/$defs/Address"}, "friends": {"type": "array", "items": {"$ref": "#/$defs/Person"}}},
        "required": ["home"]}}, "$ref": "#/$defs/Person"}
    other = {"definitions": {"Address": {"type": "string"}}, "type": "object",
             "properties": {"at": {"$ref": "#/definitions/Address"}}, "required": ["at"]}
    schema = answer_schema(Tools((Tool("save", person), Tool("note", other)), "auto", parallel=True),
                           Output("json_schema", "p", person))
    validator = jsonschema.Draft202012Validator(schema)
    friend = {"home": {"city": "b"}, "friends": [{"home": {"city": "c"}}]}
    assert validator.is_valid({"tool_calls": [{"name": "save", "arguments": friend},
                                              {"name": "note", "arguments": {"at": "here"}}]})
    assert validator.is_valid({"content": friend})
    # Each tool's Address is its own: save's is an object, note's a string.
    assert not validator.is_valid({"tool_calls": [{"name": "save", "arguments": {"home": "x"}}]})
    assert not validator.is_valid({"tool_calls": [{"name": "note", "arguments": {"at": {"city": "x"}}}]})
    assert not validator.is_valid({"content": {"home": {"town": "b"}}})


def test_an_answer_cut_by_the_token_bound_keeps_its_text_so_far():
    assert cut_content('{"content": "Paris is sun') == "Paris is sun"
    assert cut_content('{ "content" : "line one\\nline \\"two') == 'line one\nline "two'
    assert cut_content('{"content": "half an escape \\u00') == "half an escape "
    assert cut_content('{"tool_calls": [{"name": "f"') is None
