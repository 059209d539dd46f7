"""The request service's routes, one router per resource: :mod:`streams`, :mod:`runs`, :mod:`tokens`,
:mod:`callbacks` (its jobs' reports), :mod:`health` (``/healthz``, ``/metrics``); the relay's WebSocket is
:mod:`beamstream.service.relay`. Each route gets its collaborators through dependencies
(:data:`~beamstream.service.context.Context`, :data:`~beamstream.service.principal.Caller`,
:func:`~beamstream.service.access.stream_for`) and raises domain errors, which
:mod:`beamstream.service.problems` answers."""
