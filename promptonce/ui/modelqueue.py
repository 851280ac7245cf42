"""The process's line for model work (clicks, runs, corrections, undo), with places and estimates.

Gradio's own concurrency limit makes a request wait without a word ("queue: 1/1"). Model events
enter this line instead: while one waits, its handler tells the page its place and an estimate
(:meth:`ModelQueue.wait`), and the person's Stop leaves the line at once. ``limit`` requests hold the
model at a time (``PROMPTONCE_MODEL_CONCURRENCY``, default 1), first come, first served.

The estimate: a running run reports its own time left (its progress), a click counts as the mean
of the recent clicks (2 s before any), a run without a report as the mean of recent runs.
No gradio here: the handlers turn the waits into page updates.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Place", "ModelQueue", "Waiting"]

#: Seconds assumed for a request kind before any was timed.
DEFAULT_SECONDS = {"click": 2.0, "run": 30.0}


@dataclass
class Place:
    """Where a waiting request stands.

    Attributes:
        ahead: requests before it (running and waiting).
        position: its place among the waiting (1 = next).
        eta_s: seconds until its turn (an estimate), or None.
    """

    ahead: int
    position: int
    eta_s: float | None

    def text(self) -> str:
        """A line for the page."""
        eta = f", about {self.eta_s:.0f} s" if self.eta_s is not None else ""
        who = "another user's model work" if self.ahead == 1 else f"{self.ahead} model requests of other users"
        return (
            f"⏳ Waiting for {who} (you are number {self.position} in line{eta}). "
            "It starts by itself; **Stop** gives up your place."
        )


class Waiting(Exception):
    """Raised by :meth:`ModelQueue.wait` when the person stopped while waiting."""


@dataclass
class _Ticket:
    number: int
    kind: str
    started: float | None = None
    eta_s: float | None = None  # the holder's own estimate of its time left (a run's progress)
    eta_at: float = 0.0


class ModelQueue:
    """A first-come, first-served line of model requests, ``limit`` at a time.

    Args:
        limit: how many requests use the models at once.
    """

    def __init__(self, limit: int = 1) -> None:
        self.limit = max(1, int(limit))
        self._cond = threading.Condition()
        self._numbers = itertools.count(1)
        self._waiting: list[_Ticket] = []
        self._running: list[_Ticket] = []
        self._mean: dict[str, float] = dict(DEFAULT_SECONDS)

    # ------------------------------------------------------------------ the line
    def join(self, kind: str = "click") -> _Ticket:
        """Takes a place at the end of the line (``kind``: ``click`` or ``run``, for the estimate)."""
        with self._cond:
            t = _Ticket(next(self._numbers), kind if kind in DEFAULT_SECONDS else "run")
            self._waiting.append(t)
            self._start_ready()
            return t

    def leave(self, ticket: _Ticket) -> None:
        """Leaves the line, or frees the model (the time taken updates the estimates)."""
        with self._cond:
            if ticket in self._waiting:
                self._waiting.remove(ticket)
            elif ticket in self._running:
                self._running.remove(ticket)
                if ticket.started is not None:
                    took = time.monotonic() - ticket.started
                    self._mean[ticket.kind] = 0.7 * self._mean[ticket.kind] + 0.3 * took
            self._start_ready()
            self._cond.notify_all()

    def report(self, ticket: _Ticket, eta_s: float | None) -> None:
        """A running request's own estimate of its time left (from its progress)."""
        with self._cond:
            ticket.eta_s, ticket.eta_at = eta_s, time.monotonic()

    def running(self, ticket: _Ticket) -> bool:
        with self._cond:
            return ticket in self._running

    def place(self, ticket: _Ticket) -> Place | None:
        """Where ``ticket`` stands, or None when it holds the model."""
        with self._cond:
            if ticket not in self._waiting:
                return None
            i = self._waiting.index(ticket)
            now = time.monotonic()
            left = []
            for r in self._running:
                if r.eta_s is not None:
                    left.append(max(1.0, r.eta_s - (now - r.eta_at)))
                else:
                    spent = now - (r.started or now)
                    left.append(max(1.0, self._mean[r.kind] - spent))
            work = sum(left) + sum(self._mean[w.kind] for w in self._waiting[:i])
            return Place(len(self._running) + i, i + 1, work / self.limit)

    def wait(
        self, ticket: _Ticket, cancel: threading.Event | None = None, every_s: float = 0.5
    ) -> Iterator[Place]:
        """Waits for ``ticket``'s turn, yielding its :class:`Place` every ``every_s`` seconds.

        Raises:
            Waiting: ``cancel`` was set (the ticket has left the line).
        """
        while True:
            with self._cond:
                if ticket in self._running:
                    return
                if ticket not in self._waiting:
                    raise Waiting("left the line")
            if cancel is not None and cancel.is_set():
                self.leave(ticket)
                raise Waiting("stopped while waiting")
            place = self.place(ticket)
            if place is not None:
                yield place
            with self._cond:
                self._cond.wait_for(lambda: ticket not in self._waiting, timeout=every_s)

    def busy(self) -> int:
        """Requests holding or waiting for the models."""
        with self._cond:
            return len(self._running) + len(self._waiting)

    def _start_ready(self) -> None:
        while self._waiting and len(self._running) < self.limit:
            t = self._waiting.pop(0)
            t.started = time.monotonic()
            self._running.append(t)
            self._cond.notify_all()
