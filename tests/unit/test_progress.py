"""Progress: a bar in a terminal, plain periodic lines in a log file (no carriage returns)."""

from __future__ import annotations

import io
import re

from data_pipeline.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_file_gets_plain_lines_and_a_final_one(tmp_path) -> None:
    with (tmp_path / "log.txt").open("w") as log:
        with Progress(10, "prepare rank 0", "file", every=0.0, stream=log) as bar:
            for _ in range(4):
                bar.update()
            bar.set_postfix(audio_h="0.01")
    text = (tmp_path / "log.txt").read_text()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 5 and lines[0].startswith("prepare rank 0: 1/10 file (10%), ")
    assert re.fullmatch(r"prepare rank 0: 4/10 file \(40%\), \S+ file/s, elapsed 0:00:00, ETA \S+, audio_h 0.01",
                        lines[-1]), lines[-1]  # fmt: skip


def test_quiet_between_periods_and_when_disabled() -> None:
    stream = io.StringIO()
    with Progress(None, "hf import", "rec", stream=stream) as bar:  # every 30 s: only the final line here
        bar.update(3)
    assert stream.getvalue().splitlines() == [stream.getvalue().splitlines()[0]]
    assert stream.getvalue().startswith("hf import: 3 rec, ")
    silent = io.StringIO()
    with Progress(5, "x", enabled=False, stream=silent) as bar:
        bar.update(5)
    assert silent.getvalue() == ""


def test_a_terminal_gets_a_bar() -> None:
    stream = Terminal()
    with Progress(4, "encoding audio", "file", stream=stream) as bar:
        bar.update(4)
    assert "\r" in stream.getvalue() and "4/4" in stream.getvalue()
