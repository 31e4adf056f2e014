"""What a person watching a run sees: progress bars only on a terminal, and the clock."""
import sys

from training import console


def test_progress_bars_only_on_a_terminal(monkeypatch):
    assert console.progress_bar(total=3).disable  # a log file, CI, pytest
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = console.progress_bar(total=3)
    assert not bar.disable
    bar.close()
    assert console.clock(5) == "0:05" and console.clock(3725) == "1:02:05"
