"""Records read from data files, with their provenance; the error every reader raises; and the policy
that decides what a bad record does (stop the run, or be counted and skipped)."""
from collections import Counter
from dataclasses import dataclass

from general_util.errors import ConfigError, UserError

BAD_RECORD_POLICIES = ("error", "skip")


class DataError(UserError, ValueError):
    """Bad input data. The message is one line: `<file>:<line>: <reason>`. `kind` is the short category
    the skip summary counts by (e.g. "malformed JSON"); it defaults to the reason itself."""

    def __init__(self, source: str, line: int | None, reason: str, kind: str | None = None):
        self.source, self.line, self.reason = source, line, reason
        self.kind = kind or reason
        super().__init__(f"{self.location}: {reason}")

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}" if self.line is not None else self.source


@dataclass
class Record:
    data: dict | list    # the parsed JSON value, or {"text": ...} for plain text
    source: str          # file path
    line: int            # 1-based line where the record starts

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}"


class BadRecords:
    """Called with every bad record. `error`: raise it (one line naming file, line and reason).
    `skip`: count it by kind and remember the first few, for the summary that is logged and written."""

    def __init__(self, policy: str = "error", keep: int = 5):
        if policy not in BAD_RECORD_POLICIES:
            raise ConfigError(f"on_bad_record={policy!r}: use one of {', '.join(BAD_RECORD_POLICIES)}")
        self.policy, self.keep = policy, keep
        self.counts: Counter[str] = Counter()
        self.first: list[str] = []

    def __call__(self, error: DataError) -> None:
        if self.policy == "error":
            raise error
        self.counts[error.kind] += 1
        if len(self.first) < self.keep:
            self.first.append(str(error))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict:
        return {"skipped": self.total, "by_reason": dict(self.counts.most_common()), "first": list(self.first)}
