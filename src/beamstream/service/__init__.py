"""The request service: users ask for a stream over REST, the service runs and watches its jobs.

- :mod:`~beamstream.service.settings`: the service's settings (file and environment, validated).
- :mod:`~beamstream.service.states`: a stream's states and the changes allowed between them.
- :mod:`~beamstream.service.store`: the job store (SQLAlchemy; SQLite by default, PostgreSQL by URL),
  its schema kept by Alembic migrations (:mod:`beamstream.service.migrations`).
- :mod:`~beamstream.service.api`: the FastAPI application (``/v1``, OpenAPI, ``/healthz``, ``/metrics``).

Installed with ``pip install 'beamstream[service]'``.
"""
