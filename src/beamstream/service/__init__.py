"""The request service: users ask for a stream over REST, the service runs and watches its jobs.

- :mod:`~beamstream.service.settings`: the service's settings (file and environment, validated).
- :mod:`~beamstream.service.states`: a stream's states and the changes allowed between them.
- :mod:`~beamstream.service.store`: the job store (SQLAlchemy; SQLite by default, PostgreSQL by URL),
  its schema kept by Alembic migrations (:mod:`beamstream.service.migrations`).
- :mod:`~beamstream.service.api`: the FastAPI application (``/v1``, OpenAPI, ``/healthz``, ``/metrics``).
- :mod:`~beamstream.service.events`: a stream's state changes as Server-Sent Events.
- :mod:`~beamstream.service.figures`: a running stream's live figures, from its buffer's metrics.
- :mod:`~beamstream.service.relay`: a running stream's consumer side over a WebSocket.
- :mod:`~beamstream.service.policy`: who may request which experiments and see which streams.
- :mod:`~beamstream.service.tls`: HTTPS with mutual TLS: the identity from the client certificate,
  revocation checked at every handshake.
- :mod:`~beamstream.service.catalogue`: experiment and run → the files a source reads.
- :mod:`~beamstream.service.dispatcher`: starts queued streams within the limits, watches their jobs,
  ends them with their verdict.
- :mod:`~beamstream.service.executors`: where jobs run (local processes; Slurm through PSI/J), and
  :mod:`~beamstream.service.jobrun`, the wrapper that records a local job's end.
- :mod:`~beamstream.service.callbacks`: the signed reports a stream's jobs send the service.

Installed with ``pip install 'beamstream[service]'``.
"""
