"""User-facing errors: the CLI prints their message on one line and exits with status 2."""


class UsageError(Exception):
    """Bad input that the user can fix (unknown name, malformed value, missing file...)."""


class BudgetError(UsageError):
    """A budget that a method cannot reach; the message names the nearest achievable value."""


class TrainingDiverged(RuntimeError):
    """Loss became NaN or inf; the run is recorded as failed with the step and reason."""

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(f"training diverged at step {step}: {reason}")
        self.step = step
        self.reason = reason


class RunFailed(RuntimeError):
    """A run that started training and failed (diverged, crashed): its record is written, with the error. The CLI
    prints the message and exits with status 1; `peftbench.run` raises it with the record attached."""

    def __init__(self, record) -> None:
        super().__init__(f"run failed: {record.error} (record: {record.path})")
        self.record = record
