"""Progress bars per stage (tqdm on stderr) with counts and ETA; silent when disabled."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm


class Bar:
    """One stage's progress bar (a no-op when progress is off)."""

    def __init__(self, bar: tqdm | None = None):
        self._bar = bar

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set_description(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(text, refresh=False)

    def training(self, step: int, total_steps: int, metrics: dict) -> None:
        """The trainer's progress callback: steps with loss, L0 and dead fraction."""
        if self._bar is None:
            return
        if self._bar.total != total_steps:
            self._bar.reset(total=total_steps)
        self._bar.n = step
        self._bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items()}, refresh=False)
        self._bar.refresh()


#: a bar that shows nothing, for stages run where no one watches (a Ray worker)
NO_BAR = Bar()


class Progress:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    @contextmanager
    def bar(self, label: str, total: int | None, unit: str) -> Iterator[Bar]:
        bar = (
            tqdm(
                total=total,
                desc=label,
                unit=unit,
                unit_scale=unit == "tok",
                file=sys.stderr,
                dynamic_ncols=True,
                leave=True,
            )
            if self.enabled
            else None
        )
        try:
            yield Bar(bar)
        finally:
            if bar is not None:
                bar.close()

    @contextmanager
    def status(self, text: str) -> Iterator[None]:
        start = time.perf_counter()
        if self.enabled:
            print(f"{text} ...", file=sys.stderr, flush=True)
        yield
        if self.enabled:
            print(f"{text}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stderr, flush=True)
