"""Progress of a long loop (prepare, importers, encoding at start-up): tqdm's bar when stderr is a terminal; when it
is a file or a pipe, a plain line every `every` seconds and one at the end, so logs get no carriage-return floods."""

from __future__ import annotations

import datetime
import sys
import time
from typing import TextIO

PLAIN_EVERY_SECONDS = 30.0


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(max(0.0, seconds))))


class Progress:
    """`update(n)` after each unit of work, `set_postfix(**values)` for extra figures, `close()` (or a `with`)."""

    def __init__(
        self, total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True,
        every: float = PLAIN_EVERY_SECONDS, stream: TextIO | None = None,
    ) -> None:  # fmt: skip
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.stream = stream or sys.stderr
        self.count, self.postfix = 0, ""
        self.started = self.last_line = time.monotonic()
        self.enabled, self.closed = enabled, False
        self.bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def update(self, n: int = 1) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self.last_line >= self.every:
            self._line()

    def set_postfix(self, **values: object) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def line(self) -> str:
        """`desc: done/total unit (pct), rate unit/s, elapsed h:mm:ss, ETA h:mm:ss[, postfix]`."""
        elapsed = self.elapsed
        rate = self.count / elapsed if elapsed > 0 else 0.0
        done = f"{self.count}/{self.total}" if self.total else f"{self.count}"
        parts = [f"{self.desc}: {done} {self.unit}" + (f" ({self.count / self.total:.0%})" if self.total else ""),
                 f"{rate:.3g} {self.unit}/s", f"elapsed {_clock(elapsed)}"]  # fmt: skip
        if self.total and rate > 0:
            parts.append(f"ETA {_clock((self.total - self.count) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def _line(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.last_line = time.monotonic()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
