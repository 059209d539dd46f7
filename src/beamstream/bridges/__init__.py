"""Bridges: serve a beamstream stream in another facility's protocol, so that its tools read beamstream events.

A bridge reads with the beamstream :class:`~beamstream.client.Client` (any endpoint and option it takes) and
answers that protocol's readers with every event it reads.

    karabo   European XFEL's Karabo bridge (ZeroMQ REQ/REP, protocol 2.2): events as trains
             (:mod:`beamstream.bridges.karabo`, docs/karabo-bridge.md)
"""
