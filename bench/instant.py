"""A completion function that answers at once, with no HTTP: for measuring everything but the call.

Ray workers import it by name (``spec_for(..., complete=instant)`` pickles it by reference). The
answer is a plain chat.completion body that the classify job accepts ("bug"), with usage and a cost.
"""

from __future__ import annotations

import itertools
from typing import Any

_ids = itertools.count()


class _Response:
    """Just what runner reads of litellm's ModelResponse: model_dump(), usage, _hidden_params."""

    def __init__(self, body: dict[str, Any]) -> None:
        self._body = body
        self.usage = type("Usage", (), {"prompt_tokens": 150, "completion_tokens": 1})()
        self._hidden_params = {"response_cost": 2.31e-05, "headers": {"x-request-id": body["id"]}}

    def model_dump(self) -> dict[str, Any]:
        return self._body


async def instant(**request: Any) -> Any:
    """An answer to ``request`` at once: content "bug", 150 prompt tokens, 1 completion token."""
    n = next(_ids)
    body = {"id": f"chatcmpl-instant-{n}", "object": "chat.completion", "created": 0, "model": request["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "bug"}}],
            "usage": {"prompt_tokens": 150, "completion_tokens": 1, "total_tokens": 151}}  # fmt: skip
    return _Response(body)
