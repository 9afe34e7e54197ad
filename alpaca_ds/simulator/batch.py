"""The SIMULATOR's Batch API: /v1/files (upload, retrieve, content) and /v1/batches (create, retrieve, cancel,
list), speaking OpenAI's protocol, so the official client's `files.create(purpose="batch")`,
`batches.create(...)`, `batches.retrieve`, `batches.cancel`, `batches.list` and `files.content` work against it.

A batch is validated (every line: a unique custom_id, method POST, the batch's endpoint as url, a body), then
in progress for `seconds`, then its lines are answered exactly as the online endpoints would answer them (same
text, same usage; billed at the batch price) into an output file, and failed lines into an error file:

    {"id": "batch_req_...", "custom_id": "17", "response": {"status_code": 200, "request_id": "...", "body": {...}},
     "error": null}
    {"id": ..., "custom_id": "18", "response": {"status_code": 500, "request_id": ..., "body": {"error": ...}},
     "error": null}                                                                    a failed line
    {"id": ..., "custom_id": "19", "response": null, "error": {"code": "batch_expired", "message": ...}}

Faults: a share of lines fails (`line_failure`, drawn per line and attempt), prompts matching the simulator's
`fail_matching` always fail, the first `fail_batches` batches fail whole (status "failed", nothing answered,
nothing billed), the next `expire_batches` expire with half their lines answered; `lost_creates` creates answer
500 after making their batch, and `flaky_calls` calls answer 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass

ENDPOINTS = {"/v1/completions": False, "/v1/chat/completions": True}  # url -> chat?


@dataclass(frozen=True)
class BatchBehaviour:
    seconds: float = 1.0  # how long a batch stays in progress
    line_failure: float = 0.0  # share of lines answered 500 (in the error file)
    fail_batches: int = 0  # the first N batches created fail whole
    expire_batches: int = 0  # the next N expire, half answered
    lost_creates: int = 0  # the first N creates make the batch but answer 500, as if the answer were lost
    flaky_calls: int = 0  # the first N calls (upload, create, retrieve, content) answer 503


class BatchApi:
    def __init__(self, behaviour: BatchBehaviour = BatchBehaviour()):
        self.behaviour = behaviour
        self.files: dict[str, dict] = {}
        self.content: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.custom_ids: dict[str, list[str]] = {}  # batch id -> the custom_ids it was given
        self._tasks: set[asyncio.Task] = set()
        self._seq = 0
        self._flaky = self._lost = 0

    def stats(self) -> dict:
        return {
            "created": len(self.batches),
            "by_status": dict(Counter(b["status"] for b in self.batches.values())),
            "custom_ids": self.custom_ids,
        }

    def routes(self, app, sim) -> None:
        self.sim = sim
        r = app.router
        r.add_post("/v1/files", self._upload)
        r.add_get("/v1/files/{id}", self._file)
        r.add_get("/v1/files/{id}/content", self._file_content)
        r.add_post("/v1/batches", self._create)
        r.add_get("/v1/batches", self._list)
        r.add_get("/v1/batches/{id}", self._retrieve)
        r.add_post("/v1/batches/{id}/cancel", self._cancel)

    # ---- helpers ------------------------------------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        self._seq += 1
        salt = hashlib.sha256(f"{prefix}{self._seq}{time.time()}".encode()).hexdigest()[:12]
        return f"{prefix}_{self._seq:06d}{salt}"  # zero-padded: newest sorts first, as the API lists them

    def _new_file(self, data: bytes, filename: str, purpose: str) -> dict:
        fid = self._id("file")
        self.files[fid] = {
            "id": fid,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        self.content[fid] = data
        return self.files[fid]

    @staticmethod
    def _json(data, status: int = 200):
        from aiohttp import web

        return web.json_response(data, status=status)

    def _error(self, status: int, message: str):
        return self._json(
            {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}, status
        )

    def _guard(self, request):
        from alpaca_ds.simulator.server import HttpError

        try:
            self.sim.check_key(request)
        except HttpError as e:
            return self._json(e.body(), e.status)
        if self._flaky < self.behaviour.flaky_calls:
            self._flaky += 1
            return self._json(
                {
                    "error": {
                        "message": "Service unavailable (simulated).",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                },
                503,
            )
        return None

    # ---- files --------------------------------------------------------------------------------------------------

    async def _upload(self, request):
        if (denied := self._guard(request)) is not None:
            return denied
        form = await request.post()
        purpose, upload = form.get("purpose"), form.get("file")
        if upload is None or not hasattr(upload, "file") or purpose is None:
            return self._error(400, "file and purpose are required")
        return self._json(self._new_file(upload.file.read(), upload.filename or "upload.jsonl", str(purpose)))

    def _find(self, table: dict, request, what: str):
        """The object the URL names, or a 404 as the API answers it."""
        from aiohttp import web

        found = table.get(request.match_info["id"])
        if found is None:
            raise web.HTTPNotFound(
                text=json.dumps(
                    {
                        "error": {
                            "message": f"No such {what} object: {request.match_info['id']}",
                            "type": "invalid_request_error",
                            "param": None,
                            "code": None,
                        }
                    }
                ),
                content_type="application/json",
            )
        return found

    async def _file(self, request):
        return self._json(self._find(self.files, request, "File"))

    async def _file_content(self, request):
        from aiohttp import web

        if (denied := self._guard(request)) is not None:
            return denied
        return web.Response(body=self._find(self.content, request, "File"), content_type="application/octet-stream")

    # ---- batches ------------------------------------------------------------------------------------------------

    async def _create(self, request):
        if (denied := self._guard(request)) is not None:
            return denied
        body = await request.json()
        fid, endpoint = body.get("input_file_id"), body.get("endpoint")
        if fid not in self.files:
            return self._error(400, f"input_file_id {fid!r}: no such file")
        if endpoint not in ENDPOINTS or body.get("completion_window") != "24h":
            return self._error(400, f"unsupported endpoint {endpoint!r} or completion_window")
        bid = self._id("batch")
        now = int(time.time())
        self.batches[bid] = {
            "id": bid,
            "object": "batch",
            "endpoint": endpoint,
            "errors": None,
            "input_file_id": fid,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        task = asyncio.get_running_loop().create_task(self._process(bid, len(self.batches)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self._lost < self.behaviour.lost_creates:
            self._lost += 1
            return self._error(500, "The server had an error (simulated, after creating the batch).")
        return self._json(self.batches[bid])

    async def _retrieve(self, request):
        if (denied := self._guard(request)) is not None:
            return denied
        return self._json(self._find(self.batches, request, "Batch"))

    async def _cancel(self, request):
        b = self._find(self.batches, request, "Batch")
        if b["status"] in ("validating", "in_progress"):
            b["status"], b["cancelling_at"] = "cancelling", int(time.time())
        return self._json(b)

    async def _list(self, request):
        limit = int(request.query.get("limit", 20))
        after = request.query.get("after")
        ids = sorted(self.batches, reverse=True)  # newest first, as the API lists them
        if after in ids:
            ids = ids[ids.index(after) + 1 :]
        page = [self.batches[i] for i in ids[:limit]]
        return self._json(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(ids) > limit,
            }
        )

    async def _process(self, bid: str, number: int) -> None:
        b, beh = self.batches[bid], self.behaviour
        lines, problem = _read_lines(self.content[b["input_file_id"]], b["endpoint"])
        self.custom_ids[bid] = [ln["custom_id"] for ln in lines] if problem is None else []
        if problem is None and number <= beh.fail_batches:
            problem = "the batch failed (simulated)"
        if problem is not None:
            b.update(
                status="failed",
                failed_at=int(time.time()),
                errors={
                    "object": "list",
                    "data": [{"code": "invalid_request", "message": problem, "param": None, "line": None}],
                },
            )
            return
        b.update(status="in_progress", in_progress_at=int(time.time()))
        b["request_counts"]["total"] = len(lines)
        deadline = time.monotonic() + beh.seconds
        while time.monotonic() < deadline:
            if b["status"] == "cancelling":
                b.update(status="cancelled", cancelled_at=int(time.time()))
                return
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        expire = beh.fail_batches < number <= beh.fail_batches + beh.expire_batches
        chat = ENDPOINTS[b["endpoint"]]
        out, err = [], []
        for k, ln in enumerate(lines):
            rid = f"batch_req_{hashlib.sha256(f'{bid}/{k}'.encode()).hexdigest()[:20]}"
            if expire and k >= len(lines) // 2:
                err.append(
                    {
                        "id": rid,
                        "custom_id": ln["custom_id"],
                        "response": None,
                        "error": {
                            "code": "batch_expired",
                            "message": "This request could not be executed before the completion window expired.",
                        },
                    }
                )
                continue
            raw = json.dumps(ln["body"], sort_keys=True).encode()
            prompts = self.sim.prompts_of(ln["body"], chat)
            fault, frng = self.sim.fault(raw, prompts)
            if fault == "500" or frng.random() < beh.line_failure:
                self.sim.counts["batch_line_500"] += 1
                err.append(
                    {
                        "id": rid,
                        "custom_id": ln["custom_id"],
                        "response": {
                            "status_code": 500,
                            "request_id": rid,
                            "body": {
                                "error": {
                                    "message": "The server had an error (simulated).",
                                    "type": "server_error",
                                    "param": None,
                                    "code": None,
                                }
                            },
                        },
                        "error": None,
                    }
                )
                continue
            self.sim.counts["batch_line_ok"] += 1
            out.append(
                {
                    "id": rid,
                    "custom_id": ln["custom_id"],
                    "response": {
                        "status_code": 200,
                        "request_id": rid,
                        "body": self.sim.complete(ln["body"], chat, batch=True),
                    },
                    "error": None,
                }
            )
            if k % 20 == 19:
                await asyncio.sleep(0)  # let the server answer polls while a big batch is being written
        b.update(status="finalizing", finalizing_at=int(time.time()))
        b["request_counts"].update(completed=len(out), failed=len(err))
        if out:
            b["output_file_id"] = self._new_file(_jsonl(out), f"{bid}_output.jsonl", "batch_output")["id"]
        if err:
            b["error_file_id"] = self._new_file(_jsonl(err), f"{bid}_error.jsonl", "batch_output")["id"]
        now = int(time.time())
        b.update(status="expired", expired_at=now) if expire else b.update(status="completed", completed_at=now)


def _read_lines(data: bytes, endpoint: str) -> tuple[list[dict], str | None]:
    lines, seen = [], set()
    for n, raw in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            ln = json.loads(raw)
            ok = (
                isinstance(ln.get("custom_id"), str)
                and ln.get("method") == "POST"
                and ln.get("url") == endpoint
                and isinstance(ln.get("body"), dict)
                and "model" in ln["body"]
            )
        except (ValueError, AttributeError):
            ok = False
        if not ok or ln["custom_id"] in seen:
            return [], f"line {n}: not a request for {endpoint} with a unique custom_id"
        seen.add(ln["custom_id"])
        lines.append(ln)
    return lines, None


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")
