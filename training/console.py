"""
What a person watching a run sees: log lines (from rank 0 only), progress bars (on a terminal), a progress line
every half minute in a log file, and the elapsed time and ETA of the step loop.
"""
import sys
import time

import torch.distributed as dist
from tqdm import tqdm

QUIET = 30  # seconds: off a terminal, a progress line is written once this long has passed without a log line
last_line = [time.time()]  # when the last log line was written


def log(*args):
    """A console line, from rank 0 only. tqdm.write keeps a progress bar on the terminal below the line."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        tqdm.write(" ".join(map(str, args)), file=sys.stdout)
        sys.stdout.flush()
        last_line[0] = time.time()


class LogLines:
    """In place of a progress bar off a terminal (a log file, CI, a batch job): no bar, but a plain line, what is
    done, the rate and the ETA, whenever QUIET seconds pass without another log line. A long step is never silent
    in a log, and a log already busy with lines gets none."""
    disable = True  # as a tqdm that draws nothing

    def __init__(self, iterable=None, total=None, initial=0, desc=None, unit="seq"):
        self.iterable, self.total, self.n, self.initial = iterable, total, initial, initial
        self.desc, self.unit, self.t0 = desc or "progress", unit, time.time()

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.update()

    def update(self, n=1):
        self.n += n
        now = time.time()
        if now - last_line[0] >= QUIET:
            rate = (self.n - self.initial) / max(now - self.t0, 1e-9)
            left = f", ETA {clock((self.total - self.n) / rate)}" if self.total and rate > 0 else ""
            done = f"{self.n:,}/{self.total:,}" if self.total else f"{self.n:,}"
            log(f"{self.desc}: {done} {self.unit}s | {rate:,.1f} {self.unit}/s | {clock(now - self.t0)} "
                f"elapsed{left}")
            last_line[0] = now  # also where log writes nothing (ranks other than 0): the next line in QUIET s

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *_):
        pass


def progress_bar(iterable=None, total=None, initial=0, desc=None, unit="seq"):
    """A progress bar on a terminal, on rank 0; elsewhere a LogLines, whose lines are rank 0's too."""
    tty = sys.stderr.isatty() and (not dist.is_initialized() or dist.get_rank() == 0)
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not tty:
        return LogLines(iterable, total, initial, desc, unit)
    return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


def clock(seconds):
    minutes, s = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}" if minutes >= 60 else f"{minutes}:{s:02d}"


class Progress:
    """Time in the step loop: the rate and the wait for data since the last log line, the elapsed time and the
    ETA to the end of training (from the pace so far, evaluations included), and a progress bar on a terminal."""

    def __init__(self, step, total_steps):
        self.first, self.total, self.start = step, total_steps, time.time()
        self.bar = progress_bar(total=total_steps, initial=step, desc="training", unit="step")
        self.reset()

    def reset(self):
        self.t0, self.seen, self.steps, self.waited = time.time(), 0, 0, 0.0

    def update(self, n, waited):
        self.seen, self.steps, self.waited = self.seen + n, self.steps + 1, self.waited + waited
        self.bar.update()

    def timing(self, step):
        elapsed = time.time() - self.start
        left = elapsed / max(step - self.first, 1) * (self.total - step)
        return f"{clock(elapsed)} elapsed, ETA {clock(left)}"

    def close(self):
        self.bar.close()
