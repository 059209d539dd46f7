"""The service's settings: defaults, then a YAML file (``--config``), then ``BEAMSTREAM_SERVICE_*`` variables.

Every value is validated when the service starts; a wrong one stops it with a message naming it.

Two addresses matter: the one the REST API is bound at (``host``, ``port``) and the one jobs and
users reach it at (``public_url``: behind a proxy, or on a node whose bound address other nodes
cannot use). Jobs call back to ``public_url`` through their stream's callback file, which a
restarted service rewrites for every stream still starting or running, so a job whose service
came back elsewhere (another port, another host) still reaches it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """How the request service runs (each field is also ``BEAMSTREAM_SERVICE_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="BEAMSTREAM_SERVICE_", extra="forbid")

    database_url: str = Field("sqlite:///beamstream-service.db", description="the job store: a SQLAlchemy URL, "
                              "e.g. sqlite:///path/service.db or postgresql+psycopg://user@host/db")
    host: str = Field("127.0.0.1", description="address the REST API listens on")
    port: int = Field(8080, ge=0, le=65535, description="port the REST API listens on (0: any free one)")
    public_url: str | None = Field(None, pattern=r"^https?://[^/\s]+(/\S*)?$", description="the URL jobs and "
                                   "users reach the service at, e.g. https://beamstream.example.org or "
                                   "http://node7:8080 (jobs call back to it; a restarted service rewrites its "
                                   "active streams' callback files with it). Default: the URL the API is bound at, "
                                   "http://HOST:PORT with the port chosen when 0")
    executor: Literal["local", "slurm"] = Field("local", description="where streams' jobs run unless a request says")
    executors: list[Literal["local", "slurm"]] = Field(["local"], min_length=1, description="the executors "
                                                       "requests may name (slurm needs psij-python and a cluster)")
    max_streams: int = Field(16, ge=1, description="streams starting or running at once, in total; more wait queued")
    max_streams_per_user: int = Field(4, ge=1, description="streams starting or running at once, per user")
    max_local_workers: int = Field(64, ge=1, description="producer workers a stream may ask for on the local "
                                   "executor (each is a process on the service's machine)")
    default_owner: str = Field("local", min_length=1, max_length=256,
                               description="whom requests are made for until authentication is configured")
    state_dir: Path = Field(Path("beamstream-service"), description="where each stream's folder (specs, job logs, "
                            "the private callback file) is made")
    data_host: str = Field("127.0.0.1", description="address the buffer jobs bind (0.0.0.0: every interface; "
                           "consumers are then told the machine's name)")
    drain_grace_s: float = Field(60.0, gt=0, description="seconds a buffer is kept after its producers ended for "
                                 "groups to read everything (it stops earlier once every group has)")
    xtc_root: Path | None = Field(None, description="the catalogue's LCLS-II data root: "
                                  "<xtc_root>/<instrument>/<experiment>/xtc/<experiment>-r<run:04d>-s*-c*.xtc2")
    hdf5_pattern: str | None = Field(None, description="the catalogue's HDF5 runs: a glob with {experiment} and "
                                     "{run}, e.g. /data/{experiment}/raw/r{run:04d}/*.h5")
    policy_file: Path | None = Field(None, description="the authorization policy (YAML: admins, and the "
                                     "experiments each identity may read; docs/security.md), read again when it "
                                     "changes. Default: none, everyone may request any experiment and do "
                                     "everything with their own streams")
    page_size: int = Field(50, ge=1, le=1000, description="streams listed per page unless a request asks otherwise")

    @field_validator("public_url")
    @classmethod
    def _without_trailing_slash(cls, url: str | None) -> str | None:
        return None if url is None else url.rstrip("/")

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> ServiceSettings:
        """Settings from the YAML file ``path`` (if given) under the environment, then ``overrides``.

        Raises SpecError naming the file for a file that cannot be read, pydantic's ValidationError
        naming the setting for a wrong value.
        """
        from beamstream.spec_input import parse_yaml, read_spec_text

        values: dict[str, Any] = {}
        if path is not None:
            values = parse_yaml(read_spec_text(path), str(path)) or {}
        environment = cls()  # the environment over the defaults
        given = {name: getattr(environment, name) for name in environment.model_fields_set}
        return cls.model_validate({**values, **given, **overrides})
