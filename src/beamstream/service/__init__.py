"""The request service: users ask for a stream over REST, the service runs and watches its jobs.

The application (:mod:`~beamstream.service.app`) and what it serves:

- :mod:`~beamstream.service.routes`: one router per resource (streams, runs, tokens, the jobs' callbacks,
  health and metrics); :mod:`~beamstream.service.relay`, a running stream's consumer side over a WebSocket;
  :mod:`~beamstream.service.pages`, ``/``, ``/docs`` and ``/redoc``; :mod:`~beamstream.service.openapi`.
- :mod:`~beamstream.service.context`: what every route works with, given through dependencies.
- :mod:`~beamstream.service.principal`: who is asking (a certificate's identity or a token's);
  :mod:`~beamstream.service.access`: what they may do, one decision per route, from
  :mod:`~beamstream.service.policy` and the token's limits (:mod:`~beamstream.service.tokens`);
  :mod:`~beamstream.service.problems`: every refusal answered in one place, with the request's id.
- :mod:`~beamstream.service.requesting`: a request, from what was sent to a queued stream.
- :mod:`~beamstream.service.changes`: a stream's state changes as Server-Sent Events (sse-starlette), each
  follower woken by the store (:mod:`~beamstream.service.notifier`);
  :mod:`~beamstream.service.job_logs`: its jobs' output, read or followed;
  :mod:`~beamstream.service.live_rates`: a running stream's live rates and counts (its ``figures``), from
  its buffer's metrics (read by :mod:`beamstream.metrics_reading`).

What runs behind it:

- :mod:`~beamstream.service.settings`: the service's settings (file and environment, validated).
- :mod:`~beamstream.service.store`: the job store (SQLAlchemy; SQLite by default, PostgreSQL by URL;
  its tables in :mod:`~beamstream.service.tables`), its schema kept by Alembic migrations (:mod:`beamstream.service.migrations`), applied by
  ``beamstream service upgrade-db``; secrets in it sealed (:mod:`~beamstream.service.at_rest`).
- :mod:`~beamstream.service.dispatcher`: starts queued streams within the limits, watches their jobs,
  ends them with their verdict; :mod:`~beamstream.service.executors`: where jobs run (local processes; Slurm
  through PSI/J), and :mod:`~beamstream.service.jobrun`, the wrapper that records a local job's end;
  :mod:`~beamstream.service.callbacks`: the signed reports a stream's jobs send the service.
- :mod:`~beamstream.service.catalogue`: experiment and run → the files a source reads;
  :mod:`~beamstream.service.job_paths`: what a request may make its jobs open.
- :mod:`~beamstream.service.tls`: HTTPS with mutual TLS: the identity from the client certificate,
  revocation checked at every handshake (:mod:`~beamstream.service.revocation`).
- :mod:`~beamstream.service.serve` and :mod:`~beamstream.service.cli`: ``beamstream service``.

Installed with ``pip install 'beamstream[service]'``.
"""
