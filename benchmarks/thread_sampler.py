"""Where each thread of this process is, sampled: a poor man's profiler for the indexer's
threads beside a GPU, whose stages run many times slower together than alone (the
interpreter lock among them). Pure Python, so it runs where no profiler can be installed.

Every ``interval`` seconds one thread takes ``sys._current_frames()`` and counts, per
thread (names with their numbers dropped, so a pool's threads count together), the line it
is at: its innermost frame, and the nearest frame in imgsearch itself for the context. A
thread waiting for the interpreter lock shows the line it will run next; one blocked in C
(a lock, a pipe, the GPU) the Python line that called it. The sampler needs the lock to
sample, so under contention it samples less often, never more.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path

PACKAGE = f"{Path(__file__).resolve().parent.parent / 'imgsearch'}"


def _where(frame) -> str:  # noqa: ANN001 - a frame
    top = f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}:{frame.f_lineno}"
    inner = frame
    while inner is not None and not inner.f_code.co_filename.startswith(PACKAGE):
        inner = inner.f_back
    if inner is None or inner is frame:
        return top
    code = inner.f_code
    return f"{top} <- {Path(code.co_filename).name}:{code.co_name}:{inner.f_lineno}"


def _group(name: str) -> str:
    return re.sub(r"[-_]?\d+", "", name).strip() or name


class ThreadSampler:
    """Start, run the code to look at, stop, then ``report``; may be started again (the
    counts add up)."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.counts: dict[str, Counter[str]] = {}
        self.ticks = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        own = threading.get_ident()
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident != own:
                    group = _group(names.get(ident, "?"))
                    self.counts.setdefault(group, Counter())[_where(frame)] += 1
            self.ticks += 1

    def report(self, top: int = 6) -> str:
        """Per thread group, its most frequent lines with their share of its samples."""
        lines = [f"thread samples: {self.ticks} ticks of {self.interval * 1000:.0f} ms asked for"]
        for group, counts in sorted(self.counts.items(), key=lambda kv: -sum(kv[1].values())):
            total = sum(counts.values())
            lines.append(f"{group} ({total} samples)")
            for where, n in counts.most_common(top):
                lines.append(f"  {n / total:6.1%}  {where}")
        return "\n".join(lines)


def sampled(sampler: ThreadSampler, run):  # noqa: ANN001, ANN201 - any callable
    """``run`` wrapped so that the sampler runs while it does."""

    def wrapped():  # noqa: ANN202
        sampler.start()
        try:
            return run()
        finally:
            sampler.stop()

    return wrapped


if __name__ == "__main__":  # a look at itself: a busy thread and a sleeping one
    s = ThreadSampler()
    s.start()
    stop = time.time() + 0.3
    t = threading.Thread(target=lambda: time.sleep(0.3), name="sleeper-1")
    t.start()
    while time.time() < stop:
        sum(range(1000))
    t.join()
    s.stop()
    print(s.report())
