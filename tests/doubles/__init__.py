"""The test doubles: stand-ins for the model providers, one concept a module, no module importing a test.

The fake provider, an OpenAI-compatible server on 127.0.0.1 that injects faults and latency on demand
(``python -m tests.doubles --port 8099`` serves it by hand):

- ``provider``: ``FakeProvider``, the server in a background thread, as tests start it
- ``server``: ``FakeServer``, the aiohttp app with every endpoint, its admin endpoints, serving
- ``chat``: ``/v1/chat/completions`` and the faults it answers with
- ``state``: counters, holds, admission (random faults, the quota) and ``Stats``
- ``config``: ``FaultConfig``, the server-wide latency, random faults and quota; ``QUIET``
- ``directives``: the ``[[answer|fail|latency|tool|chunk|split:...]]`` a test writes in a message
- ``chat_request``: a chat request checked as OpenAI checks it, and the answer planned for it
- ``answers``: the keyword label, token estimates, example tool arguments, ``usage``
- ``wire``: OpenAI's error bodies, ``chat.completion`` and its chunks
- ``quota``: the rpm/tpm sliding window and its x-ratelimit-* headers
- ``endpoints``: ``/v1/embeddings``, ``/v1/completions``, ``/v1/responses``
- ``batches``: OpenAI's Files and Batch API; ``anthropic``: Anthropic's API; ``gemini``: Gemini's API;
  each has its ``*_state`` (faults, batches, counters) and ``*_wire`` (a request answered in its format)

In-process doubles: ``scripted`` (``ScriptedModel().enqueue([...])`` of answers and failures),
``stamped`` (litellm's completion with each send's time written down, for Ray workers). ``demo`` is
``make demo``: the classify job against the fake provider.

This file imports nothing, so a Ray worker importing ``tests.doubles.stamped`` loads no server.
"""
