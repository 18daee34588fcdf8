"""What the test modules share, one concept a module; the fixtures that use it are in ``tests/conftest.py``.

- ``files``: the repository's root, the test key, JSONL files, and waiting on files another process writes
- ``run``: a job run in-process against the fake provider, and the tickets it classifies
- ``cli``: ``python -m runner`` as a user starts it, and waiting for a server process to answer
- ``live``: an ASGI app on 127.0.0.1 in a thread, a pacing proxy, server-sent events as a client reads them
- ``browser``: a headless Chromium, or a skip that says why there is none
- ``tracing``: an OTLP/HTTP collector on 127.0.0.1, and the spans it was sent
- ``batch``: a Batch API run's records, each once by id, and the lane that answered each
- ``wire``: the same requests sent the short way and through litellm, and what to compare of their records

- ``runs_folder``: a runs folder written by hand, as weeks of nightly runs leave it
- ``netns``: two network namespaces on this machine, as two hosts

The doubles (the fake provider and its endpoints, fake Batch APIs, scripted models) are the package
``tests/doubles``; test modules import from it and from here, never from each other.
"""
