"""How a :class:`~beamstream.client.Client` gets a stream's messages: one transport per way of reading.

- :class:`~beamstream.client.transports.direct.DirectTransport`: straight from producers (ZeroMQ ROUTER or XSUB).
- :class:`~beamstream.client.transports.group.GroupTransport`: as a member of a consumer group of a local buffer.
- :class:`~beamstream.client.transports.nats.NatsTransport`: from a stream kept in NATS JetStream.
- :class:`~beamstream.client.transports.relay.RelayTransport`: as a group member through a request service's relay.
- :class:`~beamstream.client.transports.memory.MemoryTransport`: from a list of messages in memory, for tests.

:mod:`~beamstream.client.transports.schemes` picks one by the endpoint's URL scheme; each declares the
options it takes and checks them (:class:`~beamstream.client.transports.base.Transport`).

Each transport hands over raw frames (:class:`~beamstream.client.transports.base.Delivery`)
and says when the stream has ended; the Client parses, verifies, drops duplicates and keeps
the account, once, for all of them.
"""
