"""``/v1/files``: upload a batch's input (multipart, purpose ``batch``), read, list, download, delete.

Files live in Redis per account (``api/files.py``); another account's file is a 404, exactly like
one that does not exist. A batch's output and error files are listed here once the batch is seen
finished, and downloaded in OpenAI's line shape.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from api import files
from api.deps import CurrentAccount, RawRedisDep, RedisDep, SettingsDep
from api.openai.batches import output_content
from api.openai.errors import OpenAIError
from api.openapi import JSONL, streamed

router = APIRouter()

FORM_OVERHEAD = 64 * 1024  # a multipart body's boundaries and other fields, beyond the file


async def _own(redis, file_id: str, account: str) -> dict[str, str]:
    record = await files.get_own(redis, file_id, account)
    if record is None or record.get("deleted"):
        raise OpenAIError(404, f"no such file: {file_id!r}", "file_id", "file_not_found")
    return record


@router.post("/files")
async def upload_file(request: Request, account: CurrentAccount, redis: RedisDep, settings: SettingsDep):
    """multipart/form-data with ``file`` (JSONL) and ``purpose`` (``batch``), at most
    ``CHATFLEET_FILE_MAX_BYTES`` (100 MiB by default)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise OpenAIError(400, "upload the file as multipart/form-data with the fields file and purpose", "file")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.file_max_bytes + FORM_OVERHEAD:
        raise OpenAIError(413, f"the file is larger than {settings.file_max_bytes} bytes, the most one file may hold",
                          "file", "file_too_large")
    form = await request.form()
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise OpenAIError(400, "the multipart field file (the file's content) is missing", "file")
    purpose = form.get("purpose")
    if not isinstance(purpose, str) or not purpose:
        raise OpenAIError(400, "the multipart field purpose is missing (batch)", "purpose")
    try:
        return await files.upload(redis, settings, account, upload.filename or "", purpose, upload.file)
    except files.FileRefused as exc:
        raise OpenAIError(exc.status, str(exc), exc.param,
                          "file_too_large" if exc.status == 413 else "invalid_file") from None
    finally:
        await form.close()


@router.get("/files")
async def list_files(account: CurrentAccount, redis: RedisDep,
                     limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000, after: str | None = None,
                     order: Literal["asc", "desc"] = "desc", purpose: str | None = None):
    try:
        return await files.page(redis, account, limit, after, order, purpose)
    except LookupError:
        raise OpenAIError(400, f"after: no file {after!r} of yours", "after") from None


@router.get("/files/{file_id}")
async def get_file(file_id: str, account: CurrentAccount, redis: RedisDep):
    return files.view(await _own(redis, file_id, account))


BYTES = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


@router.get("/files/{file_id}/content", **streamed(JSONL, BYTES, description="the file's bytes (a batch's: JSONL)"))
async def get_file_content(file_id: str, account: CurrentAccount, redis: RedisDep, raw: RawRedisDep):
    record = await _own(redis, file_id, account)
    if record.get("batch_id"):
        body = output_content(redis, record["batch_id"], record["kind"])
    else:
        body = files.content(raw, file_id)
    return StreamingResponse(body, media_type="application/octet-stream",
                             headers={"content-disposition": f'attachment; filename="{record.get("filename", "")}"'})


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, account: CurrentAccount, redis: RedisDep):
    await files.delete(redis, await _own(redis, file_id, account))
    return {"id": file_id, "object": "file", "deleted": True}
