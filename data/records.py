"""Records read from data files, with their provenance, and the error every reader raises."""
from dataclasses import dataclass, field


class DataError(ValueError):
    """Bad input data. The message is one line: `<file>:<line>: <reason>`."""

    def __init__(self, source: str, line: int | None, reason: str):
        self.source, self.line, self.reason = source, line, reason
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {reason}")


@dataclass
class Record:
    data: dict
    source: str          # file path
    line: int            # 1-based line number (JSONL/text) or 1-based item index (JSON lists)
    extra: dict = field(default_factory=dict)

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}"
