"""A stream's states and the changes allowed between them.

    queued → starting → running → completed | failed | cancelled

A stream waits in ``queued`` until the limits on concurrent streams let it start; ``starting``
means its buffer and producer jobs are submitted; ``running`` that the buffer has said where it
listens. ``queued`` and ``starting`` may also end as ``failed`` or ``cancelled``. The last three
are final: nothing changes a finished stream.
"""

from __future__ import annotations

from enum import Enum


class State(str, Enum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset({State.COMPLETED, State.FAILED, State.CANCELLED})
NEXT: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.STARTING, State.FAILED, State.CANCELLED}),
    State.STARTING: frozenset({State.RUNNING, State.FAILED, State.CANCELLED}),
    State.RUNNING: frozenset({State.COMPLETED, State.FAILED, State.CANCELLED}),
}


class TransitionError(ValueError):
    """A state change that the lifecycle does not allow (e.g. from a final state)."""


def check_transition(old: State, new: State) -> None:
    """TransitionError unless a stream in ``old`` may go to ``new``."""
    if new not in NEXT.get(old, frozenset()):
        allowed = ", ".join(sorted(state.value for state in NEXT.get(old, ()))) or "nothing (it is final)"
        raise TransitionError(f"a {old.value} stream cannot become {new.value}; from {old.value}: {allowed}")
