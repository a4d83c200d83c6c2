"""Files in Redis, per account: uploads (a batch's input) and the output files of batches.

An upload is kept as a list of byte chunks (``keys.file_content``) beside its record
(``keys.file``), for ``CHATFLEET_FILE_RETENTION_SECONDS``, within the account's bounds (files and
bytes) and the size limit of one file. A batch's output and error files are views on its result
lists, registered when the batch is first seen finished: their content is read from the batch,
in OpenAI's line shape, and their size measured once.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import IO, Any

from shared import keys
from shared.connections import multi
from shared.scripts import source as script_source
from shared.settings import Settings

CHUNK_BYTES = 256 * 1024
PURPOSES = ("batch",)


class FileRefused(Exception):
    """A file the store does not take: ``status`` 400 or 413, ``param``, the message."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param


def safe_filename(name: str) -> str:
    """The upload's name as the file is shown and downloaded: no path, no quotes or control
    characters (it goes into a header), at most 255 characters."""
    name = re.sub(r"[^\w.\- ]", "_", name.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    return name[:255] or "upload.jsonl"


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def view(record: dict[str, str]) -> dict[str, Any]:
    """The file as OpenAI shows it."""
    expires = record.get("expires_at")
    return {"id": record["id"], "object": "file", "bytes": int(record.get("bytes") or 0),
            "created_at": int(float(record["created_at"])), "filename": record.get("filename", ""),
            "purpose": record.get("purpose", "batch"), "status": "processed", "status_details": None,
            "expires_at": int(float(expires)) if expires else None}


# An upload in progress holds its room this long past its last chunk: one that dies gives it back.
UPLOAD_HOLD_SECONDS = 600


async def _held_since_before(redis, account: str, settings: Settings) -> None:
    """An account whose files were kept before their room was held (``keys.account_files_held``):
    its files are entered there once, each with its own expiry."""
    held = keys.account_files_held(account)
    if await redis.exists(held):
        return
    ids = await redis.zrange(keys.account_files(account), 0, -1)
    async with redis.pipeline(transaction=False) as pipe:
        for file_id in ids:
            pipe.hmget(keys.file(file_id), "bytes", "expires_at")
        rows = await pipe.execute()
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        for file_id, (size, expires) in zip(ids, rows):
            if size is not None:
                until = float(expires) if expires else now + settings.file_retention_seconds
                pipe.hsetnx(held, file_id, f"{size}|{until}")
        pipe.expire(held, settings.file_retention_seconds + 86400)
        await pipe.execute()


async def _hold(redis, settings: Settings, account: str, file_id: str, size: int) -> None:
    """Hold a place and ``size`` bytes for an upload, both at once; raises FileRefused past a bound."""
    now = time.time()
    reserve = redis.register_script(script_source("reserve_file"))
    answer = await reserve(keys=[keys.account_files_held(account)], args=[
        file_id, size, settings.files_max_per_account, settings.files_max_bytes_per_account, now,
        now + UPLOAD_HOLD_SECONDS, settings.file_retention_seconds + 86400])
    if answer[0] == 1:
        raise FileRefused(400, f"this account keeps {answer[1]} files, the most it may: delete some first", "file")
    if answer[0] == 2:
        raise FileRefused(413, f"this account's files would hold more than "
                               f"{settings.files_max_bytes_per_account} bytes: delete some first", "file")


async def upload(redis, settings: Settings, account: str, filename: str, purpose: str, source: IO[bytes]) -> dict:
    """Store ``source`` (an uploaded file, spooled to disk) for ``account``; raises FileRefused.
    Its room is held before its bytes are stored (``_hold``): concurrent uploads of one account
    never pass its bounds together."""
    if purpose not in PURPOSES:
        raise FileRefused(400, f"purpose must be one of: {', '.join(PURPOSES)} (this API serves batches)", "purpose")
    await _held_since_before(redis, account, settings)
    size = source.seek(0, os.SEEK_END)  # spooled whole before the route runs: its size is known
    if size > settings.file_max_bytes:
        raise FileRefused(413, f"the file is larger than {settings.file_max_bytes} bytes, "
                               "the most one file may hold", "file")
    if size == 0:
        raise FileRefused(400, "the file is empty", "file")
    file_id = new_file_id()
    held = keys.account_files_held(account)
    await _hold(redis, settings, account, file_id, size)
    source.seek(0)
    try:
        while chunk := source.read(CHUNK_BYTES):
            await redis.rpush(keys.file_content(file_id), chunk)
    except BaseException:
        await redis.delete(keys.file_content(file_id))
        await redis.hdel(held, file_id)
        raise
    now = time.time()
    retention = settings.file_retention_seconds
    record = {"id": file_id, "account_id": account, "filename": safe_filename(filename),
              "purpose": purpose, "bytes": size, "created_at": repr(now), "expires_at": repr(now + retention)}
    async with multi(redis) as pipe:
        pipe.expire(keys.file_content(file_id), retention)  # the content first: never kept past the file
        pipe.hset(keys.file(file_id), mapping=record)
        pipe.expire(keys.file(file_id), retention)
        pipe.zadd(keys.account_files(account), {file_id: now})
        await pipe.execute()
    await redis.hset(held, file_id, f"{size}|{now + retention}")  # held as long as the file is kept
    return view({k: str(v) for k, v in record.items()})


async def get_own(redis, file_id: str, account: str) -> dict[str, str] | None:
    """The file's record if it belongs to ``account``; None otherwise, exactly as if missing."""
    record = await redis.hgetall(keys.file(file_id))
    if not record or record.get("account_id") != account:
        return None
    return record


async def content(raw, file_id: str) -> AsyncIterator[bytes]:
    """An upload's bytes, a chunk at a time (``raw``: a client that does not decode replies)."""
    start = 0
    while True:
        chunks = await raw.lrange(keys.file_content(file_id), start, start + 15)
        if not chunks:
            return
        for chunk in chunks:
            yield chunk
        start += len(chunks)


async def spooled(raw, file_id: str) -> IO[bytes]:
    """An upload copied to a temporary file (memory stays bounded whatever its size), at its start."""
    out = tempfile.SpooledTemporaryFile(max_size=4 * CHUNK_BYTES)  # noqa: SIM115 - the caller closes it
    async for chunk in content(raw, file_id):
        out.write(chunk)
    out.seek(0)
    return out


def lines_of(source: IO[bytes]) -> Iterator[bytes]:
    for raw in source:
        yield raw.rstrip(b"\r\n")


async def register_output(redis, account: str, file_id: str, filename: str, batch_id: str, kind: str,
                          created: float, expires: float, measure: Callable[[], AsyncIterator[bytes]]) -> dict:
    """A batch's output (``kind`` results) or error file, registered once; its size is measured
    from its content (``measure``) the first time."""
    record = await redis.hgetall(keys.file(file_id))
    if record.get("deleted"):
        return {}
    if not record:
        size = 0
        async for chunk in measure():
            size += len(chunk)
        record = {"id": file_id, "account_id": account, "filename": filename, "purpose": "batch_output",
                  "bytes": str(size), "created_at": repr(created), "expires_at": repr(expires),
                  "batch_id": batch_id, "kind": kind}
        async with multi(redis) as pipe:
            pipe.hsetnx(keys.file(file_id), "id", file_id)
            pipe.hset(keys.file(file_id), mapping=record)
            pipe.expireat(keys.file(file_id), int(expires) + 1)
            pipe.zadd(keys.account_files(account), {file_id: created}, nx=True)
            await pipe.execute()
        # An output file counts toward the account's bounds as an upload does, never refused.
        await redis.hsetnx(keys.account_files_held(account), file_id, f"{size}|{expires}")
    return record


async def delete(redis, record: dict[str, str]) -> None:
    """Remove a file. An output file stays deleted (its batch still names it, as OpenAI's do)."""
    file_id = record["id"]
    await redis.hdel(keys.account_files_held(record["account_id"]), file_id)
    async with multi(redis) as pipe:
        pipe.zrem(keys.account_files(record["account_id"]), file_id)
        if record.get("batch_id"):
            pipe.hset(keys.file(file_id), mapping={"deleted": "1"})
        else:
            pipe.delete(keys.file(file_id))  # gone first, then its content (each key apart: slots)
            pipe.delete(keys.file_content(file_id))
        await pipe.execute()


async def page(redis, account: str, limit: int, after: str | None, order: str, purpose: str | None,
               resolve: Callable[[dict[str, str]], Any] | None = None) -> dict[str, Any]:
    """The account's files, newest first (``order=desc``) or oldest first, after the file ``after``."""
    index = keys.account_files(account)
    ids = await redis.zrange(index, 0, -1, desc=order == "desc")
    if after is not None:
        if after not in ids:
            raise LookupError(after)
        ids = ids[ids.index(after) + 1:]
    data: list[dict] = []
    for start in range(0, len(ids), 100):
        async with redis.pipeline(transaction=False) as pipe:
            for file_id in ids[start:start + 100]:
                pipe.hgetall(keys.file(file_id))
            records = await pipe.execute()
        for record in records:
            if not record or record.get("deleted") or (purpose and record.get("purpose") != purpose):
                continue
            data.append(view(record))
            if len(data) > limit:
                break
        if len(data) > limit:
            break
    has_more = len(data) > limit
    data = data[:limit]
    return {"object": "list", "data": data, "has_more": has_more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
