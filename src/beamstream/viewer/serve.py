"""Serving the viewer: in the foreground until Ctrl-C (``beamstream view``), or on a thread beside other work
(``beamstream demo --view``).

:class:`ViewerServer` binds its address when made, so that its URL is known (and a port in use is refused,
:class:`~beamstream.errors.TransportError`) before anything is served; uvicorn then serves the application on
that socket.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

import uvicorn

from beamstream.errors import TransportError
from beamstream.viewer.app import create_app
from beamstream.viewer.latest import Latest

CLOSE_S = 5.0  # for the background server to stop


class ViewerServer:
    """The viewer of ``latest`` listening at ``host``:``port`` (0: any free port); ``url`` says where."""

    def __init__(self, latest: Latest, host: str = "127.0.0.1", port: int = 0) -> None:
        self.latest = latest
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host, port))
            self.socket.listen(64)
        except OSError as exc:
            self.socket.close()
            raise TransportError(f"the viewer cannot listen at {host}:{port}: {exc.strerror or exc}") from exc
        bound = self.socket.getsockname()[1]
        self.url = f"http://{f'[{host}]' if family == socket.AF_INET6 else host}:{bound}/"
        self.server = uvicorn.Server(uvicorn.Config(create_app(latest), log_level=logging.WARNING, access_log=False,
                                                    ws_max_size=1 << 16, ws_per_message_deflate=False,
                                                    timeout_graceful_shutdown=1))
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Serve in this thread until Ctrl-C or SIGTERM (uvicorn raises the signal again once it stopped)."""
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def __enter__(self) -> ViewerServer:
        """Serve on a background thread until the block is left."""
        self._thread = threading.Thread(target=self.run, name="beamstream-viewer", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(CLOSE_S)

    def linger(self, say: Any = print) -> None:
        """Keep serving until Ctrl-C, having said so with ``say``; return (not raise) on Ctrl-C."""
        try:  # from before saying so: a Ctrl-C as soon as it is said ends this too
            say(f"the viewer keeps showing the stream's last event at {self.url}: Ctrl-C to stop")
            threading.Event().wait()
        except KeyboardInterrupt:
            return
