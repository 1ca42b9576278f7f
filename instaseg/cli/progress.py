"""How the CLI shows the library's events: progress bars on a terminal, messages as lines."""

from __future__ import annotations

import sys

from tqdm import tqdm

from instaseg.core import events


class ConsoleListener:
    """An ``events`` listener: a tqdm bar per running task, info on stdout, ``warning:`` lines on stderr.

    Bars are drawn only on a terminal (tqdm's ``disable=None``); messages always print.
    """

    def __init__(self) -> None:
        self.bars: dict[str, tqdm] = {}

    def __call__(self, event: events.Event) -> None:
        """Show progress on its task's bar, metrics beside that bar (e.g. the training loss), messages as lines."""
        if isinstance(event, events.Progress):
            self._progress(event)
        elif isinstance(event, events.Metrics):
            bar = self.bars.get(event.task)
            if bar is not None:
                # The total loss says enough on one line; the parts are in metrics.jsonl.
                shown = {k: v for k, v in event.values.items() if k in ("loss", "lr")} or event.values
                bar.set_postfix({name: f"{value:.3g}" for name, value in shown.items()}, refresh=False)
        elif isinstance(event, events.Message):
            if event.level == "warning":
                tqdm.write(f"warning: {' '.join(event.text.split())}", file=sys.stderr)
            else:
                tqdm.write(event.text)

    def _progress(self, event: events.Progress) -> None:
        bar = self.bars.get(event.task)
        if bar is None:
            if event.finished:
                return
            bar = self.bars[event.task] = tqdm(
                total=event.total, desc=event.task, unit=event.unit, disable=None, leave=False, dynamic_ncols=True
            )
        bar.update(event.done - bar.n)
        if event.finished:
            bar.close()
            del self.bars[event.task]

    def close(self) -> None:
        """Close the bars of tasks that never reported their end (an error stopped them)."""
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
