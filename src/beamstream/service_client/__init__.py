"""The request service's client: ask a service (``beamstream service``) for a stream, follow it, read it.

    from beamstream import ServiceClient

    with ServiceClient("http://service.example:8080") as service, \
            service.request("spec.yaml", resources={"workers": 4}) as stream:
        for event in stream:  # waits until it runs, then reads it from its buffer as group "default"
            use(event.seq, event.data["image"])  # an error or Ctrl-C here cancels the stream
    print(stream.report.summary())

- :class:`ServiceClient` (:mod:`~beamstream.service_client.client`): the service's REST API under ``/v1``:
  request a stream, look one up (by its id or the start of it), list them; list an experiment's runs
  (:meth:`ServiceClient.runs`). :meth:`ServiceClient.from_profile` is the service the command line uses
  (:mod:`beamstream.profile`).
- :class:`Stream` (:mod:`~beamstream.service_client.stream`): one requested stream: its state and history
  (:attr:`Stream.info`, a :class:`~beamstream.protocol.models.StreamView`), followed as the service pushes each
  change (:meth:`Stream.changes`: server-sent events, :mod:`~beamstream.service_client.changes`); a
  :class:`~beamstream.client.Client` that reads it from its buffer or through the service's relay; cancel; its
  jobs' logs, or their lines as they are written (:meth:`Stream.follow_logs`). Used with ``with``, or iterated,
  it is cancelled when an error or Ctrl-C interrupts its use, unless kept (:meth:`Stream.keep`).

Every refusal becomes a :class:`~beamstream.errors.ServiceError` that carries the HTTP status and
the service's own words (each problem of a refused spec on its own line); a service that cannot
be reached is one too, with ``status`` None. This package needs only the core package: it talks
HTTP with httpx (server-sent events with httpx-sse, reconnecting with :mod:`beamstream.retrying`), shares the
API's models and states with the service through :mod:`beamstream.protocol`, and imports nothing of the service.
"""

from beamstream.profile import DEFAULT_PROFILE, DEFAULT_URL
from beamstream.service_client.changes import Change
from beamstream.service_client.client import PAGE, ServiceClient
from beamstream.service_client.stream import (
    DEFAULT_GROUP,
    MAX_LINE,
    READ_TIMEOUT,
    AmbiguousStreamId,
    Stream,
    bounded_lines,
    stream_path,
)

__all__ = [
    "DEFAULT_GROUP", "DEFAULT_PROFILE", "DEFAULT_URL", "MAX_LINE", "PAGE", "READ_TIMEOUT", "AmbiguousStreamId",
    "Change", "ServiceClient", "Stream", "bounded_lines", "stream_path",
]
