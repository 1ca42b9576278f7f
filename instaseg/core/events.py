"""Progress, metrics and messages as events: the library reports them, front ends show them.

Library code never prints, draws a progress bar or decides how a warning looks. It calls
``track`` around a long loop, ``metrics`` for measured values and ``info`` / ``warn`` for
messages; whoever runs it decides what happens to them by listening::

    from instaseg.core import events

    with events.listen(print):          # or a job runner's callback, or the CLI's progress bars
        instaseg.engine.train.train(...)

Listeners are kept in a ``ContextVar``, so two requests served by two threads each hear only
their own work; a thread started inside a listened block does not inherit its listeners.

With nobody listening, progress and metrics go nowhere, ``info`` goes to ``logging`` only, and
``warn`` falls back to ``warnings.warn``, so a notebook user still sees what went wrong.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

logger = logging.getLogger("instaseg")
# A library leaves logging's output to the application; without this, warnings would also reach
# stderr through logging's last-resort handler, next to what the listeners show.
logger.addHandler(logging.NullHandler())

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units of ``task`` finished (``total`` is None when unknown).

    A task starts with ``done == 0`` and ends with ``finished`` set.
    """

    task: str
    done: int
    total: int | None = None
    unit: str = "it"
    finished: bool = False


@dataclass(frozen=True)
class Metrics:
    """Values measured by ``task`` at ``step`` (an iteration, an epoch, an image count)."""

    task: str
    step: int
    values: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    """A line for the user: ``level`` is "info" or "warning"."""

    text: str
    level: str = "info"


Event = Progress | Metrics | Message
Listener = Callable[[Event], None]

_listeners: ContextVar[tuple[Listener, ...]] = ContextVar("instaseg_event_listeners", default=())


@contextmanager
def listen(listener: Listener) -> Iterator[Listener]:
    """Send every event emitted inside the block (in this thread or task) to ``listener`` too."""
    token = _listeners.set((*_listeners.get(), listener))
    try:
        yield listener
    finally:
        _listeners.reset(token)


def listening() -> bool:
    """Whether anyone listens in this context (e.g. to skip work only a listener would see)."""
    return bool(_listeners.get())


def emit(event: Event) -> None:
    """Hand ``event`` to every listener of this context."""
    for listener in _listeners.get():
        listener(event)


def track(items: Iterable[T], task: str, *, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Yield ``items``, emitting a ``Progress`` event before the first and after each one."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    if not _listeners.get():
        yield from items
        return
    done = 0
    emit(Progress(task, done, total, unit))
    try:
        for item in items:
            yield item
            done += 1
            emit(Progress(task, done, total, unit))
    finally:
        emit(Progress(task, done, total, unit, finished=True))


def metrics(task: str, step: int, **values: float) -> None:
    """Report measured values (losses, mAP, ...) of ``task`` at ``step``; also logged at INFO."""
    logger.info("%s step %d: %s", task, step, ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
    emit(Metrics(task, step, values))


def info(text: str) -> None:
    """A line of information for the user (the CLI prints it); also logged at INFO."""
    logger.info(text)
    emit(Message(text, "info"))


def warn(text: str, *, stacklevel: int = 2) -> None:
    """Something the user should know that does not stop the work.

    Listeners get a ``Message`` with level "warning"; with none, it becomes a Python
    ``UserWarning`` (shown once per place, filterable as usual).
    """
    logger.warning(text)
    if _listeners.get():
        emit(Message(text, "warning"))
    else:
        warnings.warn(text, stacklevel=stacklevel + 1)
