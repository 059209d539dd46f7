"""A request's Slurm options (``resources.slurm``): what a facility's cluster wants to hear from a job.

Each option is sbatch's own (``--account``, ``--partition``, ``--reservation``, ``--qos``, ``--gpus-per-task``,
``--exclusive``), and ``extra`` any other long option by its name (``constraint: cpu``), each of which the service
must allow (its setting ``slurm_extra_allowed``). Values are single words of the characters Slurm's names use,
so none can add a line or an option to a job script. The service puts its defaults under a request's options
(:meth:`SlurmOptions.over`; its setting ``slurm_defaults``, where ``{experiment}`` is the request's
experiment: ``account: "lcls:{experiment}"``), asks ``sbatch --test-only`` with them when the stream is requested
(Slurm's refusal is the request's answer), and shows them in the stream's ``resources``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

SlurmWord = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.:@%+,=/-]+$")]
SlurmOptionName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,63}$")]
NAMED = ("account", "partition", "reservation", "qos")  # options with a field of their own: never in extra
OWN_OPTIONS = frozenset({*NAMED, "gpus-per-task", "exclusive", "nodes", "ntasks", "time", "job-name", "chdir",
                         "output", "error", "export", "wrap", "test-only"})  # what extra may not set


class SlurmOptions(BaseModel):
    """sbatch options for a stream's jobs on the slurm executor (see the module's description)."""

    model_config = ConfigDict(extra="forbid")

    account: SlurmWord | None = Field(None, description="sbatch --account, e.g. lcls:xpptut15")
    partition: SlurmWord | None = Field(None, description="sbatch --partition, e.g. milano")
    reservation: SlurmWord | None = Field(None, description="sbatch --reservation")
    qos: SlurmWord | None = Field(None, description="sbatch --qos")
    gpus_per_task: int | None = Field(None, ge=1, le=64, description="sbatch --gpus-per-task, for the producer "
                                                                     "ranks (the buffer job takes no GPU)")
    exclusive: bool = Field(False, description="sbatch --exclusive: the producer ranks' nodes shared with no other "
                                               "job (the buffer job, one task, shares its node)")
    extra: dict[SlurmOptionName, SlurmWord] = Field(default_factory=dict, max_length=32, description=(
        "other sbatch long options, name → value (e.g. constraint: cpu), each one the service allows"))

    @model_validator(mode="after")
    def _extra_sets_no_option_of_its_own(self) -> SlurmOptions:
        taken = sorted(OWN_OPTIONS & self.extra.keys())
        if taken:
            raise ValueError(f"extra: {', '.join(taken)} cannot be set there (an option of its own, or the "
                             "service's to set)")
        return self

    def over(self, defaults: SlurmOptions) -> SlurmOptions:
        """These options, with ``defaults`` where they give none (``extra``: merged, these winning)."""
        given = self.model_dump(exclude_unset=True)
        return SlurmOptions(**{**defaults.model_dump(), **given, "extra": {**defaults.extra, **self.extra}})

    def sbatch(self) -> list[str]:
        """The options as sbatch arguments (``--account=lcls:x``, ``--exclusive``)."""
        named = [f"--{name}={getattr(self, name)}" for name in NAMED if getattr(self, name) is not None]
        if self.gpus_per_task is not None:
            named.append(f"--gpus-per-task={self.gpus_per_task}")
        if self.exclusive:
            named.append("--exclusive")
        return named + [f"--{name}={value}" for name, value in sorted(self.extra.items())]
