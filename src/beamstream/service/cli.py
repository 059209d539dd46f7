"""``beamstream service``: run the request service; ``beamstream service upgrade-db``: migrate its job store.

Importable without the service's extra: what needs it is imported when a command runs, and its absence is said in
one line naming the extra to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.text import Text

from beamstream.display import console, fail
from beamstream.errors import needs_extra

if TYPE_CHECKING:
    from beamstream.service.settings import ServiceSettings

ConfigFile = Annotated[Optional[Path], typer.Option(
    help="settings file (YAML); BEAMSTREAM_SERVICE_* variables override it")]
DatabaseURL = Annotated[Optional[str], typer.Option(help="job store URL (default: sqlite:///beamstream-service.db)")]

service_app = typer.Typer(invoke_without_command=True, subcommand_metavar="[COMMAND] [ARGS]...")


@service_app.callback()
def service(
    context: typer.Context,
    config: ConfigFile = None,
    host: Annotated[Optional[str], typer.Option(help="address to listen on (default: 127.0.0.1)")] = None,
    port: Annotated[Optional[int], typer.Option(help="port to listen on (default: 8080; 0: any free one)")] = None,
    database_url: DatabaseURL = None,
    state_dir: Annotated[Optional[Path], typer.Option(help="where streams' folders and job logs go (default: "
                                                          "./beamstream-service)")] = None,
) -> None:
    """Run the request service: REST API under /v1, OpenAPI at /docs, /healthz, /metrics. Its job store must be
    at this beamstream's schema revision: `beamstream service upgrade-db` migrates an older one."""
    if context.invoked_subcommand is not None:
        return
    from beamstream.service.serve import serve

    serve(_settings(config, host=host, port=port, database_url=database_url, state_dir=state_dir))


@service_app.command("upgrade-db")
def upgrade_db(config: ConfigFile = None, database_url: DatabaseURL = None) -> None:
    """Migrate the service's job store to this beamstream's schema revision (back it up first; stop the service
    meanwhile). A store already there is left as it is."""
    from sqlalchemy import create_engine, make_url

    from beamstream.modes import make_dirs
    from beamstream.service import migrations
    from beamstream.service.at_rest import ServiceKey, ServiceKeyError
    from beamstream.service.store import JobStore, StoreError

    settings = _settings(config, database_url=database_url)
    engine = create_engine(settings.database_url)
    try:
        before = migrations.revision(engine)
    finally:
        engine.dispose()
    try:
        make_dirs(settings.service_key_path.parent)
        JobStore.open(settings.database_url, ServiceKey.from_file(settings.service_key_path), upgrade=True).close()
    except (StoreError, ServiceKeyError) as exc:
        fail(str(exc))
    where = make_url(settings.database_url).render_as_string(hide_password=True)
    newest = migrations.head()
    said = "already at" if before == newest else f"migrated from {before or 'nothing'} to"
    console.print(Text(f"job store {where}: {said} schema revision {newest}"), highlight=False)


def _settings(config: Path | None, **given: Any) -> ServiceSettings:
    """The service's settings: ``config``'s, overridden by the environment, then by the options ``given``; exits
    2 with one line per problem, or 1 naming the extra to install if the service's is missing."""
    from pydantic import ValidationError

    try:
        from beamstream.service.settings import ServiceSettings
        import fastapi  # noqa: F401 (the service's extra)
    except ImportError as exc:
        fail(needs_extra("the request service", "service", cause=exc))
    try:
        return ServiceSettings.load(config, **{name: value for name, value in given.items() if value is not None})
    except ValidationError as exc:
        fail("; ".join(_problem(error) for error in exc.errors()), code=2)


def _problem(error: dict[str, Any]) -> str:
    """One settings problem in a line: ``LOCATION: MESSAGE``, or the message alone for a check across settings
    (which has no location); pydantic's "Value error, " prefix left out."""
    message = error["msg"].removeprefix("Value error, ")
    location = ".".join(map(str, error["loc"]))
    return f"{location}: {message}" if location else message
