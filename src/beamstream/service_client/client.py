"""The request service's REST API under ``/v1``, from Python (:class:`ServiceClient`): request a stream, look one
up (by its id or the start of it), list them; list an experiment's runs. Each stream is a
:class:`~beamstream.service_client.stream.Stream`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from beamstream.errors import OptionError, ServiceError, SpecError
from beamstream.profile import DEFAULT_URL, service_target
from beamstream.protocol.models import Resources, RunList, RunView
from beamstream.protocol.states import State
from beamstream.security.tls_context import client_tls_context, tls_refusal
from beamstream.service_client.stream import AmbiguousStreamId, Stream, stream_path

PAGE = 1000  # streams asked for per page when listing (the service's largest page)


class ServiceClient:
    """A request service's REST API at ``url``; ``timeout`` bounds each request (seconds).

    A service with mutual TLS (``https://``) takes ``cert`` and ``key``, the user's certificate and
    key (PEM files), and ``ca``, the CA certificate that verifies the service (default: the system's
    trusted CAs); the relay (:meth:`Stream.client` with ``relay``) uses them too. Instead of a
    certificate, ``token`` (a bearer token a certificate holder minted, ``POST /v1/tokens``) names the
    caller: it goes in the ``Authorization`` header of every request and of the relay's handshake
    (default: ``$BEAMSTREAM_TOKEN``; pass ``token=""`` for none). OptionError for any of them with an
    ``http://`` URL (a token must not cross a network in clear), or a certificate without its key.

    ``transport`` replaces httpx's network transport (e.g. an ``httpx.MockTransport`` in tests).
    Use it as a context manager, or :meth:`close` it, to release its connections.
    """

    def __init__(self, url: str = DEFAULT_URL, timeout: float = 30.0, *,
                 transport: httpx.BaseTransport | None = None, cert: str | Path | None = None,
                 key: str | Path | None = None, ca: str | Path | None = None, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.tls: tuple | None = None
        self.token = os.environ.get("BEAMSTREAM_TOKEN") if token is None else token or None
        options: dict[str, Any] = {}
        if (cert, key, ca) != (None, None, None):
            if not self.url.startswith("https://"):
                raise OptionError(f"cert, key and ca apply only to an https:// service, not {self.url}")
            self.tls = (cert, key, ca)
            options["verify"] = client_tls_context(self.tls)
        if self.token is not None:
            if not self.url.startswith("https://"):
                raise OptionError(f"a bearer token goes only to an https:// service, not {self.url}: it would cross "
                                  "the network in clear (unset BEAMSTREAM_TOKEN, or use the service's https:// URL)")
            options["headers"] = {"Authorization": f"Bearer {self.token}"}
        self.http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport, **options)

    @classmethod
    def from_profile(cls, path: str | Path | None = None, timeout: float = 30.0, *, url: str | None = None,
                     cert: str | Path | None = None, key: str | Path | None = None, ca: str | Path | None = None,
                     **options: Any) -> ServiceClient:
        """The service the command line would use (:func:`~beamstream.profile.service_target`): ``url``, ``cert``,
        ``key`` and ``ca`` each as given, else its environment variable (``$BEAMSTREAM_SERVICE``, …), else the
        profile's (``path``, else ``$BEAMSTREAM_PROFILE``, else ``~/.config/beamstream/profile.yaml``), else
        :data:`DEFAULT_URL` and none; the profile's TLS files only for an ``https://`` service. OptionError for a
        profile that is missing (when named), unreadable or invalid. ``options`` go to the constructor."""
        target = service_target(url, cert, key, ca, profile=path)
        return cls(target.url, timeout, cert=target.cert, key=target.key, ca=target.ca, **options)

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def __repr__(self) -> str:
        return f"ServiceClient({self.url!r})"

    def request(self, spec: dict[str, Any] | str | Path | None = None, *,
                resources: Resources | dict[str, Any] | None = None,
                experiment: str | None = None, run: int | None = None, name: str | None = None,
                keep: bool = False) -> Stream:
        """Ask for a stream; it is queued at once and started when the service's limits allow.

        ``spec`` is a spec as a dict, or the path of a YAML or JSON spec file (read with the same
        checks as ``beamstream spec check``); its sinks may be left out (the service adds the one to
        the stream's buffer; ``beamstream spec check --for-service`` checks such a spec). With ``experiment``
        and ``run``, a source that reads files but names none reads the run's files, found by the service's
        catalogue; the spec may then be left out. ``resources``: a :class:`~beamstream.protocol.models.Resources`,
        or a dict of some of its fields (``workers``, ``nodes``, ``time_limit_s``, ``executor``, ``buffer``), which
        the service checks. With ``keep``, the stream is not cancelled when an error or Ctrl-C interrupts its
        use (:meth:`Stream.keep`).
        """
        if isinstance(resources, Resources):
            resources = resources.model_dump(mode="json", exclude_unset=True)
        body = {"spec": _spec_data(spec), "resources": resources, "name": name, "experiment": experiment, "run": run}
        answer = self.call("POST", "/v1/streams", json={key: value for key, value in body.items() if value is not None})
        view = answer.json()
        return Stream(self, view, credentials=view.pop("credentials", None)).keep(keep)

    def stream(self, stream_id: str) -> Stream:
        """The stream with this id, as the service shows it now."""
        return Stream(self, self.call("GET", stream_path(stream_id)).json())

    def find(self, id_or_prefix: str) -> Stream:
        """The stream with this id, else the only one whose id starts with it among the streams the service lists
        for the caller (``GET /v1/streams``: their own; an admin's, everyone's), as the service shows it now.

        ServiceError (404) if no stream's id is or starts with it; AmbiguousStreamId, naming them, if the ids of
        several start with it; OptionError for an empty one.
        """
        if not id_or_prefix:
            raise OptionError("no stream id given: give a stream's id, or the start of it")
        try:
            return self.stream(id_or_prefix)
        except ServiceError as exc:
            if exc.status != 404:
                raise
            unknown = exc
        found = [stream for stream in self.streams() if stream.id.startswith(id_or_prefix)]
        if not found:
            raise ServiceError(f"{unknown}, nor any whose id starts with {id_or_prefix!r} among yours", 404,
                               unknown.detail)
        if len(found) > 1:
            raise AmbiguousStreamId(id_or_prefix, found)
        return self.stream(found[0].id)

    def streams(self, state: State | str | None = None, experiment: str | None = None, owner: str | None = None,
                limit: int | None = None) -> list[Stream]:
        """The streams in ``state`` of ``experiment`` and ``owner`` (each filter if given), newest first:
        every one, or the first ``limit``. ValueError for a state that is not one of :class:`State`'s."""
        found: list[Stream] = []
        while limit is None or len(found) < limit:
            params = {"state": None if state is None else State(state).value, "experiment": experiment,
                      "owner": owner, "offset": len(found),
                      "limit": PAGE if limit is None else min(PAGE, limit - len(found))}
            page = self.call("GET", "/v1/streams",
                             params={key: value for key, value in params.items() if value is not None}).json()
            found += [Stream(self, view) for view in page["items"]]
            if not page["items"] or len(found) >= page["total"]:
                break
        return found

    def runs(self, experiment: str) -> list[RunView]:
        """The runs of ``experiment`` that the service's catalogue finds, in run order: each its number (``run``),
        the source type that reads it (``source``) and its ``files``. ServiceError (404) for an experiment the
        service knows no runs of, or that the caller may not read."""
        path = f"/v1/experiments/{quote(experiment, safe='')}/runs"
        return RunList.model_validate(self.call("GET", path).json()).runs

    def call(self, method: str, path: str, **options: Any) -> httpx.Response:
        """The service's answer to ``method path`` (httpx ``options``); ServiceError for a refusal or no answer."""
        try:
            response = self.http.request(method, path, **options)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        self.check(response)
        return response

    def check(self, response: httpx.Response) -> None:
        """ServiceError, in the service's words, unless ``response`` succeeded."""
        if response.is_success:
            return
        response.read()
        detail = _detail(response)
        where = f"{response.request.method} {response.request.url.path}"
        separator = "\n" if "\n" in detail else " "
        raise ServiceError(f"the service refused {where} ({response.status_code} {response.reason_phrase}):"
                           f"{separator}{detail}", response.status_code, detail)

    def unreachable(self, exc: httpx.TransportError) -> ServiceError:
        """The ServiceError for a request that got no answer (``exc`` says why): when TLS refused the connection,
        on either side, why, naming the file concerned and what to do
        (:func:`~beamstream.security.tls_context.tls_refusal`); else "no answer"."""
        refused = tls_refusal(exc, self.tls)
        if refused is not None:
            return ServiceError(f"TLS with the service at {self.url} failed: {refused}")
        return ServiceError(f"no answer from the service at {self.url}: {exc or type(exc).__name__}")


def _detail(response: httpx.Response) -> str:
    """The service's words in a refusal: its ``detail`` (a list, as a validation error's ``location: message``
    lines, joined one item a line), else the start of the body."""
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return response.text[:2000].strip() or response.reason_phrase
    return "\n".join(str(item) for item in detail) if isinstance(detail, list) else str(detail)


def _spec_data(spec: dict[str, Any] | str | Path | None) -> dict[str, Any]:
    """The spec to send: ``spec`` itself, the content of the spec file it names, or ``{}`` for None."""
    if spec is None:
        return {}
    if isinstance(spec, dict):
        return spec
    from beamstream.spec_input import parse_yaml, read_spec_text

    path = Path(spec)
    data = parse_yaml(read_spec_text(path), str(path))
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping with keys source, steps, serializer, sinks; "
                        f"got {type(data).__name__}")
    return data
