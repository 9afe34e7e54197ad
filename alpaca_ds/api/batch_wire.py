"""The Batch API on the wire, for the transport (batch.py) that builds on it: the openai client's calls, each
retried on what a retry can mend; the check that a server has the Batch API; finding a batch a killed run created
but did not record; downloading a file's JSONL lines; and the lines themselves: a request's (`custom_id`,
`method`, `url`, `body`) and a result's (`response` with its `status_code` and `body`, or `error`), read into the
Outcome an online call would give.
"""

from __future__ import annotations

import asyncio
import json
import random

from alpaca_ds.api.calls import backoff_delay
from alpaca_ds.api.client import ApiClient, Outcome
from alpaca_ds.api.config import ApiConfig
from alpaca_ds.common.errors import UserError


class BatchWire:
    """The Batch API calls of one API configuration and key, and the lines of its files."""

    def __init__(
        self, api: ApiConfig, key: str | None, prompts_of, stop: list[str] | None, logit_bias: dict[str, int] | None
    ):
        self.api = api
        self.prompts_of = prompts_of  # key -> the request's prompts
        self.stop, self.logit_bias = stop, logit_bias
        self.client = ApiClient(api, key)
        self._jitter = random.Random()  # timing only

    async def check_endpoints(self) -> None:
        """Refuse a server without the Batch API before anything is uploaded or spent."""
        import openai

        try:
            await self.client.openai.batches.list(limit=1)
        except openai.NotFoundError:
            raise UserError(
                f"api.base_url {self.api.base_url} serves no Batch API (/v1/batches answered 404): set "
                "api.transport: online, or use a server that has /v1/files and /v1/batches"
            ) from None
        except openai.APIStatusError as e:
            if e.status_code in (401, 403):
                raise UserError(
                    f"api.base_url {self.api.base_url} refused the key ({e.status_code}); check ${self.api.api_key_env}"
                ) from None
            raise

    async def close(self) -> None:
        await self.client.close()

    async def _call(self, what: str, make):
        """One Batch API call, retried on the failures a retry can mend (connection, timeout, 429, 5xx) with the
        online backoff: a batch runs for hours, and a hiccup while polling it must not end the run."""
        import openai

        for attempt in range(1, self.api.max_retries + 2):
            try:
                return await make()
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as e:
                if attempt > self.api.max_retries:
                    raise UserError(
                        f"the Batch API failed {attempt} times to {what} ({self.client.scrub(str(e))}); "
                        "rerun the same command to continue where it stopped"
                    ) from None
                await asyncio.sleep(backoff_delay(self.api, attempt, None, self._jitter))

    async def _find_batch(self, file_id: str, since: float):
        """The batch created for `file_id` by a run killed before it could record it, if any (the list is newest
        first: it is looked through back to shortly before the file was uploaded)."""
        async for b in self.client.openai.batches.list(limit=100):
            if b.input_file_id == file_id:
                return b
            if b.created_at < since - 600:
                break
        return None  # (an error here fails the caller's attempt, which _call retries)

    async def _lines(self, file_id: str | None) -> list[dict]:
        if not file_id:
            return []
        content = await self._call("download a file", lambda: self.client.openai.files.content(file_id))
        return [json.loads(x) for x in content.text.splitlines() if x.strip()]

    def _line(self, key) -> bytes:
        url, body = self.client.request(self.prompts_of(key), self.stop, self.logit_bias)
        return (
            json.dumps({"custom_id": str(key), "method": "POST", "url": url, "body": body}, ensure_ascii=False).encode(
                "utf-8"
            )
            + b"\n"
        )

    def _outcome(self, line: dict | None, status: str, num_prompts: int) -> Outcome:
        if line is None:  # the batch failed or was cancelled before answering it
            return Outcome(
                "cancelled" if status == "cancelled" else f"batch_{status}",
                error=f"the batch {status} without answering it",
            )
        resp, err = line.get("response"), line.get("error")
        if resp and resp.get("status_code") == 200:
            return self.client.parse(json.dumps(resp["body"]), num_prompts)
        if err:
            return Outcome(
                "expired" if err.get("code") == "batch_expired" else "batch_error",
                error=self.client.scrub(f"{err.get('code')}: {err.get('message')}"),
            )
        return Outcome(
            "server_error",
            http=resp.get("status_code") if resp else None,
            error=self.client.scrub(json.dumps(resp)[:300] if resp else "no response"),
        )
