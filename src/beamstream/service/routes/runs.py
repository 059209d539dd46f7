"""``/v1/experiments/{experiment}/runs``: the runs of an experiment the service's catalogue finds."""

from __future__ import annotations

from fastapi import APIRouter

from beamstream.protocol.models import Problem, RunList, RunView
from beamstream.service.access import check_experiment
from beamstream.service.context import Context
from beamstream.service.principal import Caller

router = APIRouter(prefix="/v1/experiments", tags=["runs"])


@router.get("/{experiment}/runs", response_model=RunList, responses={404: {"model": Problem}})
def experiment_runs(experiment: str, principal: Caller, context: Context) -> RunList:
    """The runs of an experiment that the catalogue finds, with their files (404 for an experiment the caller
    may not read, as for one the catalogue does not know)."""
    check_experiment(context, principal, experiment)
    runs = context.catalogue.runs(experiment)
    return RunList(experiment=experiment,
                   runs=[RunView(run=run.run, source=run.source, files=run.files) for run in runs])
