"""The service's settings: defaults, then a YAML file (``--config``), then ``BEAMSTREAM_SERVICE_*`` variables, then
the command's options: pydantic-settings sources, merged before anything is validated (so the environment may
complete the file's TLS settings).

Every value is validated when the service starts; a wrong one stops it with a message naming it.

Two addresses matter: the one the REST API is bound at (``host``, ``port``) and the one jobs and
users reach it at (``public_url``: behind a proxy, or on a node whose bound address other nodes
cannot use); buffer jobs likewise bind ``data_host`` and are advertised as ``data_advertise``, and
``buffer_launcher`` and ``producers_launcher`` run jobs on other hosts (the reference's last
section). Jobs call back to ``public_url`` through their stream's callback file, which a
restarted service rewrites for every stream still starting or running, so a job whose service
came back elsewhere (another port, another host) still reaches it.

With ``tls_cert``, ``tls_key`` and ``tls_ca`` (and, recommended, ``tls_crl``) the service serves
HTTPS only, with mutual TLS (docs/security.md, Mutual TLS); without any of them, plain HTTP. Some
but not all of them is refused. ``tls_client_cert: optional`` lets clients without a certificate
complete the handshake, to authenticate with a bearer token (docs/security.md, Tokens).

Every setting is described once, in its field; docs/service-settings.md is generated from them
(``python -m beamstream.service.settings > docs/service-settings.md``; tests/test_service.py fails
when it is stale), and examples/service/settings.yaml shows a facility's configuration.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict,
                               YamlConfigSettingsSource)

from beamstream.protocol.slurm import SlurmOptions

_settings_file: ContextVar[Path | None] = ContextVar("settings_file", default=None)  # ServiceSettings.load's file


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
    service_key_file: Path | None = Field(None, description="the key the job store seals each stream's key and "
                                          "callback secret with, kept outside the database (made, mode 600, if "
                                          "missing; default: <state_dir>/service.key); a database without it "
                                          "opens no stream")
    data_host: str = Field("127.0.0.1", description="address the buffer jobs bind (0.0.0.0: every interface; "
                           "consumers are then told the machine's name, unless data_advertise gives another)")
    data_advertise: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9.:-]*$",
                                       description="the name (or address) of the buffer jobs' host as the service, "
                                       "producers and consumers reach it, put in the endpoints the buffer jobs "
                                       "report (e.g. buf7.example.org: its address behind a NAT, or a name other "
                                       "hosts resolve). Default: as the buffer job bound them (data_host, or its "
                                       "machine's name for 0.0.0.0). A stream whose buffer the service cannot "
                                       "reach at these endpoints fails saying so")
    buffer_launcher: list[str] = Field(default_factory=list, description="the command the local executor puts "
                                       "before each buffer job's command, to run it on another host: e.g. "
                                       "[ssh, -tt, buf7] or [ip, netns, exec, bs-buf] (it must run the command in "
                                       "the foreground and pass SIGTERM on; the host must see the same Python "
                                       "and state_dir). Empty: on the service's host")
    producers_launcher: list[str] = Field(default_factory=list, description="the same for each producers job "
                                          "(all its workers run on that host)")
    job_time_limit_s: float = Field(86400.0, gt=0, le=7 * 86400, description="wall-clock limit of a stream's "
                                    "jobs when its request gives none (resources.time_limit_s); a scheduler needs "
                                    "one (PSI/J's own default is 10 minutes)")
    drain_grace_s: float = Field(60.0, gt=0, description="seconds a buffer is kept after its producers ended for "
                                 "groups to read everything (it stops earlier once every group has)")
    xtc_root: Path | None = Field(None, description="the catalogue's LCLS-II data root: "
                                  "<xtc_root>/<instrument>/<experiment>/xtc/<experiment>-r<run:04d>-s*-c*.xtc2")
    hdf5_pattern: str | None = Field(None, description="the catalogue's HDF5 runs: a glob with {experiment} and "
                                     "{run}, e.g. /data/{experiment}/raw/r{run:04d}/*.h5")
    calib_pattern: str | None = Field(None, description="each experiment's calibration folder, whose files "
                                      "(constants: pedestals, gains, masks) a request's steps may read: a path with "
                                      "{experiment} and {instrument}, e.g. /data/{experiment}/calib (default: "
                                      "<xtc_root>/<instrument>/<experiment>/calib when xtc_root is set)")
    policy_file: Path | None = Field(None, description="the authorization policy (YAML: admins, and the "
                                     "experiments each identity may read; docs/security.md), read again when it "
                                     "changes. Default: none, everyone may request any experiment and do "
                                     "everything with their own streams")
    tls_cert: Path | None = Field(None, description="the service's TLS certificate (PEM, with its chain; its "
                                  "subject alternative names must name the host of public_url). With tls_key and "
                                  "tls_ca: HTTPS only, a client certificate required")
    tls_key: Path | None = Field(None, description="the key of tls_cert (PEM, mode 0600)")
    tls_ca: Path | None = Field(None, description="the CA certificate(s) (PEM) client certificates must be signed by")
    tls_crl: Path | None = Field(None, description="the CA's revocation list (PEM), checked on every connection and "
                                 "read again when the file changes (recommended: without it, a revoked "
                                 "certificate is accepted until it expires)")
    tls_client_cert: Literal["required", "optional"] = Field("required", description="whether the TLS handshake "
                                                             "requires a client certificate (required) or verifies "
                                                             "one only if presented (optional: clients without one, "
                                                             "notebooks and browsers, then authenticate with a "
                                                             "bearer token; docs/security.md, Tokens)")
    tls_jobs_cert: Path | None = Field(None, description="the client certificate the service's jobs present when "
                                       "they call it back (PEM; extended key usage clientAuth, from tls_ca's CA, e.g. "
                                       "`beamstream ca issue DIR --user beamstream-jobs`). Default: tls_cert, if it "
                                       "allows clientAuth")
    tls_jobs_key: Path | None = Field(None, description="the key of tls_jobs_cert")
    page_size: int = Field(50, ge=1, le=1000, description="streams listed per page unless a request asks otherwise")
    slurm_defaults: dict[str, Any] = Field(default_factory=dict, description="sbatch options every slurm stream "
                                           "gets unless its request says otherwise (resources.slurm's keys: account, "
                                           "partition, reservation, qos, gpus_per_task, exclusive, extra); "
                                           "{experiment} in a value is the request's experiment, e.g. "
                                           "{account: 'lcls:{experiment}', partition: milano}")
    slurm_extra_allowed: list[str] = Field(default_factory=list, description="the sbatch long options requests may "
                                           "give in resources.slurm.extra, by name, e.g. [constraint, mem-per-cpu]")

    def slurm_options_for(self, experiment: str | None) -> SlurmOptions:
        """:attr:`slurm_defaults` for a request of ``experiment`` ({experiment} → its name; "none" without one)."""
        return SlurmOptions.model_validate(_filled(self.slurm_defaults, experiment or "none"))

    @field_validator("public_url")
    @classmethod
    def _without_trailing_slash(cls, url: str | None) -> str | None:
        return None if url is None else url.rstrip("/")

    @field_validator("tls_cert", "tls_key", "tls_ca", "tls_crl", "tls_jobs_cert", "tls_jobs_key")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        return None if path is None else path.expanduser().absolute()  # jobs read them from elsewhere

    @field_validator("slurm_defaults")
    @classmethod
    def _slurm_defaults_valid(cls, defaults: dict[str, Any]) -> dict[str, Any]:
        SlurmOptions.model_validate(_filled(defaults, "experiment"))
        return defaults

    @model_validator(mode="after")
    def _tls_whole(self) -> ServiceSettings:
        given = [name for name in ("tls_cert", "tls_key", "tls_ca") if getattr(self, name) is not None]
        extra = [name for name in ("tls_crl", "tls_jobs_cert", "tls_jobs_key") if getattr(self, name) is not None]
        if given and len(given) < 3 or extra and not given:
            missing = [name for name in ("tls_cert", "tls_key", "tls_ca") if getattr(self, name) is None]
            raise ValueError(f"TLS is half configured: {', '.join(given + extra)} given, {', '.join(missing)} "
                             "missing (give tls_cert, tls_key and tls_ca, and tls_crl, or none of them)")
        if (self.tls_jobs_cert is None) != (self.tls_jobs_key is None):
            raise ValueError("tls_jobs_cert and tls_jobs_key go together")
        if given and self.public_url is not None and not self.public_url.startswith("https://"):
            raise ValueError(f"public_url {self.public_url} is not https://, but the service serves HTTPS only "
                             "(tls_cert is set)")
        return self

    @model_validator(mode="after")
    def _reachable_from_other_hosts(self) -> ServiceSettings:
        """Jobs launched on other hosts call the service back at public_url (buffer jobs) and meet at the buffer's
        endpoints (all jobs): neither may be a loopback address then."""
        launchers = [name for name in ("buffer_launcher", "producers_launcher") if getattr(self, name)]
        if not launchers:
            return self
        from urllib.parse import urlsplit

        from beamstream.transport import loopback

        public = urlsplit(self.public_url).hostname if self.public_url else None
        if self.buffer_launcher and (public is None or loopback(public) or public in ("0.0.0.0", "::")):
            raise ValueError("buffer_launcher runs buffer jobs on another host, which call the service back at "
                             f"public_url, but public_url {self.public_url or 'is not set'}"
                             f"{' names this host only' if self.public_url else ''}: set it to the service's URL "
                             "as other hosts reach it, e.g. https://svc7.example.org:8080")
        if loopback(self.data_advertise or self.data_host):
            raise ValueError(f"{launchers[0]} runs jobs on another host, but the buffer's endpoints would be "
                             f"{self.data_advertise or self.data_host}, which is this host only: set data_host to "
                             "an address the buffer jobs bind (0.0.0.0: every interface) and data_advertise to "
                             "their host's name as the service, producers and consumers reach it")
        return self

    @property
    def service_key_path(self) -> Path:
        """Where the service key is: ``service_key_file``, or ``service.key`` in ``state_dir``."""
        return self.service_key_file or self.state_dir / "service.key"

    @property
    def tls(self) -> bool:
        """Whether the service serves HTTPS with mutual TLS (tls_cert, tls_key and tls_ca are set)."""
        return self.tls_cert is not None

    @property
    def jobs_certificate(self) -> tuple[Path, Path] | None:
        """The certificate and key the service's jobs present when they call it back (None without TLS)."""
        if not self.tls:
            return None
        if self.tls_jobs_cert is not None:
            return self.tls_jobs_cert, self.tls_jobs_key
        return self.tls_cert, self.tls_key

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> ServiceSettings:
        """Settings from the YAML file ``path`` (if given) under the environment, then ``overrides``.

        Raises SpecError naming the file for a file that cannot be read, pydantic's ValidationError
        naming the setting for a wrong value.
        """
        token = _settings_file.set(path)
        try:
            return cls(**overrides)
        finally:
            _settings_file.reset(token)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Where settings come from, the first that gives one winning: the arguments (:meth:`load`'s
        ``overrides``), the ``BEAMSTREAM_SERVICE_*`` variables, the file given to :meth:`load`. No ``.env`` file,
        no secrets folder."""
        return init_settings, env_settings, _SettingsFile(settings_cls, _settings_file.get())


class _SettingsFile(YamlConfigSettingsSource):
    """The settings file (YAML), read as spec files are: SpecError naming it if it is missing, too large, not
    YAML, or not a mapping of settings."""

    def _read_files(self, files: Any, deep_merge: bool = False) -> dict[str, Any]:
        from beamstream.errors import SpecError
        from beamstream.spec_input import parse_yaml, read_spec_text

        if files is None:
            return {}
        values = parse_yaml(read_spec_text(Path(files)), str(files)) or {}
        if not isinstance(values, dict):
            raise SpecError(f"{files}: not a mapping of settings (setting: value, one a line)")
        return values


def _filled(options: Any, experiment: str) -> Any:
    """``options`` with ``{experiment}`` in every text replaced by ``experiment``."""
    if isinstance(options, str):
        return options.replace("{experiment}", experiment)
    if isinstance(options, dict):
        return {key: _filled(value, experiment) for key, value in options.items()}
    return options


def reference() -> str:
    """The settings as a Markdown reference: each one's name, variable, default and description."""
    lines = ["# The request service's settings", "",
             "Generated from `ServiceSettings` (`python -m beamstream.service.settings > docs/service-settings.md`).",
             "Each is read from the settings file given with `beamstream service --config FILE` (YAML; see",
             "[examples/service/settings.yaml](../examples/service/settings.yaml)), then from its environment variable, which wins; "
             "a wrong",
             "value stops the service with a message naming it.", "",
             "| setting | environment variable | default | what it does |", "| --- | --- | --- | --- |"]
    for name, field in ServiceSettings.model_fields.items():
        value = field.get_default(call_default_factory=True)
        default = "" if value is None else f"`{value}`"
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{name}` | `BEAMSTREAM_SERVICE_{name.upper()}` | {default} | {description} |")
    return "\n".join(lines + ["", *HOSTS_APART]) + "\n"


HOSTS_APART = """## Where each part listens, and the address others are told

| part | binds | is reached at (advertised) | used by |
| --- | --- | --- | --- |
| the service | `host`, `port` | `public_url` (default: the bound URL) | buffer jobs' callbacks, users, relay readers |
| a buffer job | `data_host` (free ports) | `data_advertise` (default: as bound) | producers, consumers, the service |
| a producers job | nothing | - | - |

The local executor runs every job on the service's host unless `buffer_launcher` or `producers_launcher` puts a
command before the job's (`[ssh, -tt, HOST]`, `[ip, netns, exec, NS]`). Jobs on other hosts need addresses
those hosts reach: the service refuses to start with a buffer launcher and a `public_url` that is unset or
loopback (buffer jobs could not call back), or with a launcher and buffer endpoints that would be loopback
(`data_host` 127.0.0.1 and no `data_advertise`). With TLS, `tls_cert` must name `public_url`'s host among its
subject alternative names (`beamstream ca issue DIR --service HOST`), or the service does not start. Once a buffer job has called back, the
service connects to each of its endpoints as advertised: a stream whose buffer it cannot reach fails, naming the
endpoint and `data_advertise`. A buffer job that cannot call the service back logs that `public_url` must name the
service as its host reaches it. tests/test_hosts_apart.py runs the service, a buffer job, producers and consumers on
four hosts (network namespaces, tests/hosts.py; `scripts/hosts.sh up` makes such hosts by hand).""".splitlines()


if __name__ == "__main__":
    print(reference(), end="")
