"""What the request service and its clients both speak, below both: neither imports the other for it.

- :mod:`~beamstream.protocol.states`: a stream's states and the changes allowed between them.
- :mod:`~beamstream.protocol.models`: the REST API's request and answer bodies (pydantic models), which the
  service validates and serves and the client reads.
"""
