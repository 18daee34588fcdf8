"""runner: an asyncio batch job runner for LLM calls (JSONL in, OpenAI Batch results out).

From Python: ``runner.run(job, rows_or_path, **options)`` and ``await runner.arun(...)`` (``runner.api``).
Job modules need only ``Job``, ``InvalidResult``, ``RowError`` and ``content_of``; importing this
package does not import litellm.
"""

from typing import Any

from runner.errors import InvalidResult, RowError
from runner.job.definition import Job, content_of, first_choice

__all__ = ["InvalidResult", "Job", "RowError", "RunOptions", "RunResult", "arun", "content_of", "first_choice", "run"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The Python API, imported on first use. ``runner.run`` is also the coordinator's subpackage: once that
    # is imported it takes the name, and calling it calls the API (runner/run/__init__.py).
    if name in ("run", "arun", "RunResult"):
        from runner import api

        return getattr(api, name)
    if name == "RunOptions":
        from runner.options import RunOptions

        return RunOptions
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
