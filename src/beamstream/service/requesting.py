"""A stream request, from what a caller sent to a queued stream: who may ask for what (:mod:`access`), the run the
catalogue finds, the spec checked as ``beamstream spec check --for-service`` checks it, the paths it names
confined to those granted, the jobs it needs checked against what the executor gives — and only then stored.
A request refused at any step leaves nothing behind."""

from __future__ import annotations

from typing import Any

from beamstream.protocol.models import StreamRequest
from beamstream.service.access import check_request, path_grant
from beamstream.service.catalogue import Run
from beamstream.service.context import ServiceContext
from beamstream.service.job_paths import confined
from beamstream.service.principal import Principal
from beamstream.service.problems import Invalid
from beamstream.service.store import StreamRecord
from beamstream.sources.hdf5 import CXI_DATA
from beamstream.spec import parse_service_spec


def accept(context: ServiceContext, principal: Principal, request: StreamRequest) -> StreamRecord:
    """Queue the stream ``request`` asks for, as ``principal``'s; the dispatcher is woken to start it. Raises the
    domain error of the first step that refuses it: NotAllowed (policy, token limits, paths), RunNotFound,
    SpecError, Invalid (an executor this service lacks), CannotRun (more than the executor gives, or it does not
    answer)."""
    check_request(context, principal, request)
    requested = dict(request.spec)
    run = context.catalogue.find(request.experiment, request.run) if request.from_catalogue else None
    if run is not None:
        requested = with_run_files(requested, run)
    spec = parse_service_spec(requested, origin="spec")  # a request need not name its sinks
    grant = path_grant(context, principal, request.experiment, run)
    requested = confined(requested, spec, grant, "spec")
    resources = confined(request.resources.model_dump(mode="json"), request.resources, grant, "resources")
    executor = request.resources.executor or context.settings.executor
    if executor not in context.executors:
        raise Invalid(f"resources.executor: {executor!r} is not available on this service; it runs jobs with: "
                      f"{', '.join(sorted(context.executors))}")
    resources["slurm"] = slurm_options(context, request, executor)
    context.check_resources(resources)
    record = context.store.create(owner=principal.identity, spec=requested, resources=resources,
                                  name=request.name or spec.name, experiment=request.experiment, run=request.run)
    context.wake()
    return record


def slurm_options(context: ServiceContext, request: StreamRequest, executor: str) -> dict[str, Any] | None:
    """The sbatch options of a stream running on ``executor``: the request's over the service's defaults for its
    experiment, as JSON (None off Slurm). Invalid for options given for another executor, or an ``extra`` option
    the service does not allow."""
    asked = request.resources.slurm
    if executor != "slurm":
        if asked is not None:
            raise Invalid(f"resources.slurm: sbatch options are for the slurm executor; this stream runs on {executor}")
        return None
    allowed = set(context.settings.slurm_extra_allowed)
    refused = sorted(set(asked.extra) - allowed) if asked is not None else []
    if refused:
        raise Invalid(f"resources.slurm.extra: {', '.join(refused)} not allowed here; this service allows "
                      f"{', '.join(sorted(allowed)) or 'none'} (its setting slurm_extra_allowed)")
    defaults = context.settings.slurm_options_for(request.experiment)
    return (asked.over(defaults) if asked is not None else defaults).model_dump(mode="json")


def with_run_files(spec: dict[str, Any], run: Run) -> dict[str, Any]:
    """``spec`` whose source reads ``run``'s files (the source type the run needs, unless the spec names one; the
    files unless it names some, or for a psana2 source of a run with small data, the run's ``dir`` (psana reads it
    by ``exp``, ``run`` and ``dir``, shared out among MPI ranks); a psana2 source's ``exp`` and ``run``; an hdf5
    source's CXI detector data as the field ``image``, unless it names its datasets), and whose description says
    which experiment and run it is (unless the spec's ``metadata:`` says otherwise)."""
    source = dict(spec.get("source") or {})
    source.setdefault("type", run.source)
    if source["type"] == "psana2" and run.dir is not None and "files" not in source:
        source.setdefault("dir", run.dir)
    else:
        source.setdefault("files", run.files)
    if source["type"] == "psana2":
        source.setdefault("exp", run.experiment)
        source.setdefault("run", run.run)
    if source["type"] == "hdf5":
        source.setdefault("datasets", {"image": CXI_DATA})
    metadata = {"experiment": run.experiment, "run": run.run, **(spec.get("metadata") or {})}
    return {**spec, "source": source, "metadata": metadata}
