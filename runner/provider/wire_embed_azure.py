"""``azure/`` embeddings the short way: how litellm's Azure embedding handler reads an answer, and what it fails with.

litellm sends ``azure/<deployment>`` embeddings through the openai SDK's ``AsyncAzureOpenAI``
(``AzureChatCompletion.aembedding``) to the deployment's URL with its API version and the key in an
``api-key`` header (``wire_http.Route``), with ``embeddings.create``: a call that names no encoding asks for
base64 and gets the numbers back decoded (``wire_embed_sdk.decoded``); an encoding the call names is sent and
kept as it is. Its failures: an HTTP error answer is the SDK's error for that status and no answer its time-out
or connection error, raised as they are (not wrapped, as the OpenAI handler wraps them); a body that is not JSON
an ``AzureOpenAIError`` carrying the answer's own status (200), as is one that is only a string; anything the
SDK cannot read as an answer its own error. ``wire_embed.EmbedSender`` maps each with ``exception_type`` for
``azure``, as ``aembedding`` does.
"""

from __future__ import annotations

import json
from typing import Any, Final

from litellm.llms.azure.common_utils import AzureOpenAIError

from runner.provider.wire_embed_sdk import decoded, read

__all__ = ["ENCODING", "answer"]

ENCODING: Final = "base64"  # what the SDK asks for when the call names no encoding


def answer(raw: bytes, headers: dict[str, str], status: int, asked: bool) -> Any:
    """The answer as litellm's Azure handler has it from the SDK (``raw_response.parse()``), the numbers decoded
    unless the call ``asked`` for an encoding; else the error that handler or the SDK raises."""
    try:
        parsed = read(raw, headers)
    except json.JSONDecodeError as exc:
        message = f"Failed to parse raw Azure embedding response: {exc}"
        raise AzureOpenAIError(status_code=status or 500, message=message) from exc
    if not asked:
        return decoded(parsed)
    if isinstance(parsed, str):
        message = f"Unexpected string response from Azure: {parsed[:500]}"
        raise AzureOpenAIError(status_code=status or 500, message=message)
    return parsed
