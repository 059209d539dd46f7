"""Logging what hostile or broken peers send without letting them flood the log."""

from __future__ import annotations

import logging
from typing import Any


class WarnOnce:
    """Logs a warning the first time each key is seen (at most ``limit`` keys are remembered; past
    that, no more warnings): one line per kind of refusal, not one per message."""

    def __init__(self, logger: logging.Logger, limit: int = 100) -> None:
        self.logger = logger
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, key: str, message: str, *args: Any) -> None:
        if key not in self.seen and len(self.seen) < self.limit:
            self.seen.add(key)
            self.logger.warning(message, *args)
