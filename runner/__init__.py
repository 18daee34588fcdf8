"""runner: an asyncio batch job runner for LLM calls (JSONL in, OpenAI Batch results out).

Job modules need only ``Job``, ``InvalidResult``, ``RowError`` and ``content_of``; importing this
package does not import litellm.
"""

from runner.errors import InvalidResult, RowError
from runner.job.definition import Job, content_of, first_choice

__all__ = ["InvalidResult", "Job", "RowError", "content_of", "first_choice"]
__version__ = "0.1.0"
