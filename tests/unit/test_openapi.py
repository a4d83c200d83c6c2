"""The OpenAPI document says what each door answers, and a 405 names every method of its path."""

from fastapi.testclient import TestClient

from api.main import create_app


def test_each_operation_documents_its_doors_errors_and_its_content_types():
    schema = create_app().openapi()
    paths = schema["paths"]
    chat_v1 = paths["/v1/chat/completions"]["post"]["responses"]
    assert "422" not in chat_v1  # the OpenAI door answers validation errors with 400
    assert "error" in chat_v1["400"]["content"]["application/json"]["schema"]["properties"]
    assert {"400", "401", "413", "429", "503"} <= set(chat_v1)
    assert "text/event-stream" in chat_v1["200"]["content"]
    chat_v4 = paths["/v4/chat-completions"]["post"]["responses"]
    assert "422" in chat_v4 and "detail" in chat_v4["400"]["content"]["application/json"]["schema"]["properties"]
    assert "text/event-stream" in chat_v4["200"]["content"] and "application/json" in chat_v4["200"]["content"]
    assert "404" in paths["/v4/jobs/{job_id}"]["get"]["responses"]
    assert "404" not in paths["/v4/models"]["get"]["responses"]
    assert set(paths["/v4/jobs/{job_id}/stream"]["get"]["responses"]["200"]["content"]) == {"text/event-stream"}
    assert set(paths["/v4/batches/{batch_id}/results"]["get"]["responses"]["200"]["content"]) == {"application/jsonl"}
    assert "text/csv" in paths["/v4/usage"]["get"]["responses"]["200"]["content"]
    assert "application/jsonl" in paths["/v1/files/{file_id}/content"]["get"]["responses"]["200"]["content"]
    batch_body = paths["/v4/batches"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(batch_body)


def test_a_405_names_every_method_its_path_is_served_with():
    client = TestClient(create_app())  # no lifespan: routing alone answers a 405
    r = client.delete("/v1/files")
    assert r.status_code == 405
    assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}, r.headers["allow"]
    assert r.json()["error"]["message"].startswith("DELETE is not served here")
    r = client.put("/v4/jobs/job_x")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert "detail" in r.json()
