"""Runner's exceptions, in one place.

    RunnerError                 stops the run; the CLI turns it into one line and an exit code
    ├── UsageError              bad flag, unknown job, missing input or API key      (exit 2)
    │   └── JobDefinitionError  a job module that does not define a valid job        (exit 2)
    │   └── RunChangedError     resuming a run whose job, model or input changed     (exit 2)
    ├── FatalProviderError      authentication, permission, unknown model            (exit 3)
    ├── BudgetExhausted         stopped before --max-cost could be passed             (exit 4)
    ├── LockedError             another process is running the same run directory    (exit 75)
    └── Interrupted             SIGINT / SIGTERM, after a clean checkpoint        (exit 130 / 143)

    RowError                    one row failed for good; becomes a line in errors.jsonl
    └── InvalidResult           a job rejected the model's answer (raised by job code)

Only ``runner.cli`` turns these into messages and exit codes.
"""

from __future__ import annotations

__all__ = [
    "EXIT_FAILED_ROWS",
    "EXIT_OK",
    "BudgetExhausted",
    "FatalProviderError",
    "Interrupted",
    "InvalidResult",
    "JobDefinitionError",
    "LockedError",
    "RowError",
    "RunChangedError",
    "RunnerError",
    "UsageError",
    "first_runner_error",
]


EXIT_OK, EXIT_FAILED_ROWS = 0, 1  # every row finished without errors; finished, some rows in errors.jsonl


class RunnerError(Exception):
    """An error that stops the whole run."""

    exit_code = 1


class UsageError(RunnerError):
    """The command line, the job or the environment needs fixing before anything runs."""

    exit_code = 2


class JobDefinitionError(UsageError):
    """A job module exists but does not define a valid job."""


class RunChangedError(UsageError):
    """The run directory was started with a different job, model or input."""


class LockedError(RunnerError):
    """Another process holds the run directory's lock."""

    exit_code = 75


class FatalProviderError(RunnerError):
    """The provider refused in a way every other request would repeat (key, permission, model)."""

    exit_code = 3


class BudgetExhausted(RunnerError):
    """The next request could have taken the spend past --max-cost; the run stopped, resumable."""

    exit_code = 4


class RowError(Exception):
    """One row failed for good: recorded in errors.jsonl, the run goes on."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


class InvalidResult(RowError):
    """The model answered, but the job's parser rejected the answer."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_result", message)


class Interrupted(RunnerError):
    """SIGINT or SIGTERM stopped the run after a clean checkpoint (exit 128 + signal number)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum
        self.exit_code = 128 + signum


def first_runner_error(group: BaseExceptionGroup) -> BaseException:
    """The first runner error in a task group's failure, so the CLI can name it; else the group."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            inner = first_runner_error(exc)
            if inner is not exc:
                return inner
        elif isinstance(exc, RunnerError):
            return exc
    return group
