"""A beamstream stream kept in NATS JetStream: the connection, the store that appends, the readers.

- :mod:`~beamstream.jetstream.urls`: ``nats://HOST:PORT/NAME`` (no nats-py needed).
- :mod:`~beamstream.jetstream.connection`: a synchronous connection over nats-py's asyncio client.
- :mod:`~beamstream.jetstream.store`: :class:`NatsStore` appends messages and verdicts (the buffer's side).
- :mod:`~beamstream.jetstream.readers`: group members and lossy readers (the client's side).

The layout of the stream (subjects, headers) is part of the wire format: :mod:`beamstream.wire.nats`.
Both the buffer and the client use this package; it uses neither.
"""
