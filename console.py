"""
What a person watching a run sees: log lines (from rank 0 only), progress bars (on a terminal only), and the
elapsed time and ETA of the step loop.
"""
import sys
import time

import torch.distributed as dist
from tqdm import tqdm


def log(*args):
    """A console line, from rank 0 only. tqdm.write keeps a progress bar on the terminal below the line."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        tqdm.write(" ".join(map(str, args)), file=sys.stdout)
        sys.stdout.flush()


def progress_bar(iterable=None, total=None, initial=0, desc=None, unit="seq"):
    """A progress bar on a terminal, on rank 0; nothing in a log file or CI, where the log lines say as much."""
    show = sys.stderr.isatty() and (not dist.is_initialized() or dist.get_rank() == 0)
    return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, disable=not show, leave=False,
                dynamic_ncols=True)


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
