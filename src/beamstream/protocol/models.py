"""The request service's REST API bodies: what a client sends (:class:`StreamRequest`, :class:`TokenRequest`) and
what the service answers (:class:`StreamView` and the rest); the OpenAPI document is made from them."""

from __future__ import annotations

import warnings
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from beamstream.buffer.config import BufferConfig
from beamstream.protocol.slurm import SlurmOptions
from beamstream.protocol.states import State

DEFAULT_TTL_S = 3600  # of a token, unless asked otherwise
MAX_TTL_S = 86400
EXPERIMENT_PATTERN = r"^[A-Za-z0-9_.-]+$"


class Resources(BaseModel):
    """What a stream's jobs may use."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(1, ge=1, le=4096, description="producer workers (local processes or MPI/srun ranks)")
    nodes: int = Field(1, ge=1, le=1024, description="nodes for the producer job (slurm)")
    time_limit_s: float | None = Field(None, gt=0, le=7 * 86400, description="wall-clock limit of the jobs")
    executor: Literal["local", "slurm"] | None = Field(None, description="where the jobs run (default: the service's)")
    buffer: BufferConfig | None = Field(None, description="buffer settings (endpoints and the admission key are "
                                                          "the service's)")
    slurm: SlurmOptions | None = Field(None, description="sbatch options (executor slurm only); the service's "
                                                          "defaults fill what they leave out")

    @field_validator("buffer")
    @classmethod
    def _no_key_file(cls, buffer: BufferConfig | None) -> BufferConfig | None:
        if buffer is not None and buffer.admission_key_file is not None:
            raise ValueError("admission_key_file is the service's to give: it gives each stream's buffer that "
                             "stream's admission key; leave it out")
        return buffer


class StreamRequest(BaseModel):
    """A request for a stream: its spec (the model ``beamstream spec check`` reads) and resources."""

    model_config = ConfigDict(extra="forbid")

    spec: dict[str, Any] = Field(default_factory=dict,
                                 description="the stream spec, as in a spec file; its sinks may be left out "
                                             "(the service adds a stream sink to the stream's buffer), and all of "
                                             "it with experiment and run (a source that reads the run's files)")
    resources: Resources = Field(default_factory=Resources)
    name: str | None = Field(None, max_length=256)
    # with both, a source that reads files but names none (psana2, hdf5, or no type) reads the catalogue's
    experiment: str | None = Field(None, min_length=1, max_length=256, pattern=EXPERIMENT_PATTERN)
    run: int | None = Field(None, ge=0, le=10**9)

    @property
    def source(self) -> dict[str, Any]:
        """The spec's source as given (empty if it gives none, or not a mapping)."""
        source = self.spec.get("source")
        return source if isinstance(source, dict) else {}

    @property
    def from_catalogue(self) -> bool:
        """Whether the source reads the files the service's catalogue finds for the experiment and run: both are
        given and the source reads files (psana2, hdf5, or no type) without naming any."""
        return (self.experiment is not None and self.run is not None
                and self.source.get("type") in (None, "psana2", "hdf5") and "files" not in self.source)


class ChangeView(BaseModel):
    state: State
    reason: str
    at: float = Field(description="seconds since the Unix epoch")


class StreamView(BaseModel):
    """A stream as the API shows it."""

    id: str
    owner: str
    name: str | None
    experiment: str | None
    run: int | None
    state: State
    created: float
    updated: float
    history: list[ChangeView]
    endpoints: dict[str, Any] | None = Field(description="where to read the stream, once it runs")
    verdict: dict[str, Any] | None = Field(description="the stream's verdict, once it ended")
    resources: dict[str, Any]
    figures: dict[str, Any] | None = Field(None, description="a running stream's live figures, from its buffer "
                                                                "(only in GET /v1/streams/{id})")


class Credentials(BaseModel):
    """A stream's credentials: its key, for its owner only (docs/security.md, Stream credentials). Producers seal
    the stream's messages with it, consumers open them, the buffer admits those who prove they hold it."""

    stream: str = Field(description="the stream's id")
    key: str = Field(description="the stream's key (URL-safe base64): beamstream.security.streamkey.StreamKey")

    def __getitem__(self, name: str) -> str:
        """``credentials["key"]``, as when ``Stream.credentials()`` gave a dict: kept one release, warning."""
        if name not in type(self).model_fields:
            raise KeyError(name)
        warnings.warn(f"Stream.credentials() gives a Credentials object now: write .{name}, not [{name!r}]",
                      DeprecationWarning, stacklevel=2)
        return getattr(self, name)


class StreamCreated(StreamView):
    """A stream just requested, as the API shows it, with its credentials (in this answer to its owner only)."""

    credentials: Credentials | None = Field(description="the stream's credentials (None: the service keeps none)")


class StreamPage(BaseModel):
    items: list[StreamView]
    total: int
    limit: int
    offset: int


class OutputFile(BaseModel):
    path: str = Field(description="relative to the stream's output folder (a files sink's relative dir is there)")
    size: int = Field(description="bytes")


class OutputFiles(BaseModel):
    """What a stream's jobs wrote into its output folder."""

    stream: str
    files: list[OutputFile]


class RunView(BaseModel):
    """A run of an experiment, as the service's catalogue finds it."""

    run: int
    source: str = Field(description="the source type that reads it (psana2, hdf5)")
    files: list[str]


class RunList(BaseModel):
    experiment: str
    runs: list[RunView]


class TokenRequest(BaseModel):
    """A token to mint: how long it lives, and what it is limited to (by default: all the caller may)."""

    model_config = ConfigDict(extra="forbid")

    ttl_s: int = Field(DEFAULT_TTL_S, ge=1, le=MAX_TTL_S, description="seconds until it expires")
    experiments: list[Annotated[str, Field(min_length=1, max_length=256, pattern=EXPERIMENT_PATTERN)]] | None = (
        Field(None, max_length=64, description="only streams (and runs) of these experiments"))
    stream: str | None = Field(None, min_length=1, max_length=32, pattern=r"^[0-9a-f]+$",
                               description="only this stream (one of the caller's)")


class TokenView(BaseModel):
    """A minted token: the secret (shown this once, never stored), its id (to revoke it) and its limits."""

    token: str
    id: str
    expires: float = Field(description="seconds since the Unix epoch")
    experiments: list[str] | None
    stream: str | None


class Problem(BaseModel):
    """Why a request was not done: one sentence, or one ``LOCATION: what is wrong`` line per problem; and the
    request's id, which the service's log line about it carries too."""

    detail: str | list[str]
    request_id: str | None = Field(None, description="also in the answer's X-Request-ID header and the service's log")
