import pytest

from api.prompts import RequestError, build_messages, job_spec, render_template
from api.request import CompletionRequest
from api.sgp.wire import ChatCompletionRequest
from shared.catalog import get_catalog
from shared.jobspec import Turn

LOCAL = get_catalog().get("smollm2-135m-instruct")
RESERVATION = 4096


def req(**kw) -> CompletionRequest:
    body = {"model": "smollm2-135m-instruct", "messages": [{"content": "hi"}], **kw}
    return ChatCompletionRequest.model_validate(body).to_request()


def spec_of(request: CompletionRequest, spec):
    return job_spec(request, spec, RESERVATION)


def test_missing_role_means_user():
    assert build_messages(req()) == [Turn("user", "hi")]


def test_memory_strategy_applies_before_instructions():
    msgs = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    out = build_messages(req(messages=msgs, instructions="be brief",
                             memory_strategy={"params": {"k": 2}}))
    assert out == [Turn("system", "be brief"), Turn("user", "m3"), Turn("user", "m4")]


def test_instructions_with_a_system_message_is_refused():
    with pytest.raises(RequestError, match="instructions"):
        build_messages(req(instructions="x", messages=[{"role": "system", "content": "s"}, {"content": "u"}]))


def test_text_parts_are_joined():
    r = req(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"text": "b"}]}])
    assert build_messages(r)[0].content == "ab"


def test_defaults_temperature_and_raw_prompt_max_tokens():
    spec = spec_of(req(), LOCAL)
    assert spec.params.temperature == 0.2
    assert spec.params.max_tokens == 100
    assert spec.prompt.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\nhi<|im_end|>" in spec.prompt


def test_camel_and_snake_case_top_k_top_p():
    a = req(model_parameters={"topK": 5, "topP": 0.5})
    b = req(model_parameters={"top_k": 5, "top_p": 0.5})
    assert spec_of(a, LOCAL).params == spec_of(b, LOCAL).params


def test_custom_chat_template_gets_messages_and_tokens():
    tpl = "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}"
    spec = spec_of(req(chat_template=tpl), LOCAL)
    assert spec.prompt == "<|im_start|>[user]hi<|im_end|>"


@pytest.mark.parametrize("template, needle", [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "sandbox"),
    ("{{ messages.__class__ }}", "sandbox"),
    ("{% for m in messages %}{{ m.content ", "syntax error"),
    ("{{ raise_exception('no system role') }}", "no system role"),
    ("{% for i in range(100000) %}x{% endfor %}", "range"),
    ("{{ 'x' * 100000000 }}", "larger than allowed"),
    ("{% for i in range(9000) %}{% for j in range(9000) %}{% endfor %}{% endfor %}", "longer than"),
    ("{{ 1/0 }}", "ZeroDivisionError"),
    ("   ", "empty prompt"),
])
def test_hostile_or_broken_templates_are_clear_400s(template, needle):
    with pytest.raises(RequestError, match=needle):
        render_template(template, [{"role": "user", "content": "hi"}], LOCAL)


def test_parameter_the_model_does_not_take_is_refused():
    longrun_like = LOCAL.model_copy(update={"parameters": ("temperature",)})
    with pytest.raises(RequestError, match="does not support the parameter"):
        spec_of(req(model_parameters={"presence_penalty": 0.1}), longrun_like)


def test_chat_template_for_a_family_without_raw_prompts_is_refused():
    hosted = LOCAL.model_copy(update={"family": "openai", "chat_template": False})
    with pytest.raises(RequestError, match="takes no chat_template"):
        spec_of(req(chat_template="{{ messages }}"), hosted)


@pytest.mark.parametrize("template", [
    "{{ ((((10**64)**64)**64)**64) > 1 }}",
    "{{ 'a'|center(300000000) }}",
    "{{ '%300000000d' % 1 }}",
    "{{ 'a'.center(300000000) }}",
    "{{ (10**4000) * (10**4000) }}",
])
def test_templates_cannot_stall_or_exhaust_the_api(template):
    # Each would hold the GIL or allocate hundreds of MB if it ran; it is refused before.
    with pytest.raises(RequestError, match=r"too large|too much|wider|larger"):
        render_template(template, [{"role": "user", "content": "hi"}], LOCAL)


def test_lone_surrogate_in_content_is_a_validation_error():
    from pydantic import ValidationError
    with pytest.raises(ValidationError, match="lone surrogate"):
        req(messages=[{"content": "bad \ud800 text"}])


def test_a_prompt_too_large_is_said_of_the_messages_not_the_template():
    spec = get_catalog().get("smollm2-135m-instruct")
    body = {"model": spec.id, "messages": [{"content": "x" * 2_000_001}]}
    huge = ChatCompletionRequest.model_validate(body).to_request()
    with pytest.raises(RequestError) as caught:
        spec_of(huge, spec)
    message = str(caught.value)
    assert "2000001 characters" in message and "messages" in message and "chat_template" not in message
    assert caught.value.param == "messages"
