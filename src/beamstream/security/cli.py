"""``beamstream ca``: make the certificates for mutual TLS with the small CA of :mod:`beamstream.security.ca`.

Errors of the CA are :class:`~beamstream.errors.AuthorityError`, which ``beamstream``'s entry point prints as one
line (exit 1); a wrong combination of options exits 2. ``cryptography`` is imported only when a command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer

from beamstream.display import console, fail
from beamstream.errors import MissingDependency

if TYPE_CHECKING:
    from types import ModuleType

ca_app = typer.Typer(help="Make certificates for mutual TLS: a CA, user and service certificates, revocations.",
                     no_args_is_help=True)

Directory = Annotated[Path, typer.Argument(help="the CA directory (mode 0700)", metavar="DIR")]
CrlDays = Annotated[int, typer.Option("--crl-days", metavar="DAYS", help="days until the revocation list's next update")]


def ca_module() -> ModuleType:
    """:mod:`beamstream.security.ca`, or MissingDependency saying what to install when ``cryptography`` is absent."""
    try:
        from beamstream.security import ca
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("cryptography"):
            raise
        raise MissingDependency(f"beamstream ca needs cryptography, which beamstream depends on: pip install "
                                f"'cryptography>=50' ({exc})") from exc
    return ca


def usage_error(message: str) -> NoReturn:
    fail(message, code=2)


def parse_serial(text: str) -> int:
    """A serial number as ``beamstream ca list`` shows it (hex; ``0x`` and colons allowed)."""
    try:
        return int(text.replace(":", "").removeprefix("0x"), 16)
    except ValueError:
        usage_error(f"--serial {text!r}: expected a serial in hex, as `beamstream ca list` shows it")


@ca_app.command("init")
def init(directory: Directory,
         name: Annotated[str, typer.Option(metavar="NAME", help="the CA's name (its certificate's common name)")] = "beamstream CA",
         days: Annotated[int, typer.Option(metavar="DAYS", help="days the CA certificate is valid")] = 3650,
         crl_days: CrlDays = 30) -> None:
    """Make a CA: a key (ca.key, 0600), a self-signed certificate (ca.crt) and an empty revocation list (crl.pem)."""
    authority = ca_module().init_ca(directory, name, days, crl_days=crl_days)
    console.print(f"CA {name!r} in {directory}, valid until {authority.certificate.not_valid_after_utc:%Y-%m-%d}: "
                  f"give ca.crt and crl.pem to services and users; ca.key stays here", highlight=False)


@ca_app.command("issue")
def issue(directory: Directory,
          user: Annotated[Optional[str], typer.Option(metavar="NAME", help="a user certificate for NAME (clientAuth)")] = None,
          service: Annotated[Optional[list[str]], typer.Option(
              metavar="HOST", help="a service certificate for HOST, a DNS name or IP address (serverAuth); repeat for more names")
          ] = None,
          days: Annotated[int, typer.Option(metavar="DAYS", help="days the certificate is valid")] = 365) -> None:
    """Make a key and a certificate signed by the CA, for a user (--user) or a service (--service)."""
    if (user is None) == (not service):
        usage_error("give --user NAME or --service HOST (repeatable), not both")
    credentials = ca_module().issue(directory, user=user, service=service or None, days=days)
    record = credentials.issued
    names = f" ({', '.join(record.names)})" if record.names else ""
    console.print(f"{record.kind} {record.subject}{names}: serial {record.serial:x}, valid until "
                  f"{record.not_after:%Y-%m-%d}; certificate {credentials.certificate}, key {credentials.key}",
                  highlight=False)


@ca_app.command("revoke")
def revoke(directory: Directory,
           serial: Annotated[Optional[str], typer.Option(metavar="N", help="the serial (hex) of one certificate")] = None,
           user: Annotated[Optional[str], typer.Option(metavar="NAME", help="every unrevoked certificate of this user")] = None,
           service: Annotated[Optional[str], typer.Option(
               metavar="HOST", help="every unrevoked certificate of this service (its first host name)")] = None,
           crl_days: CrlDays = 30) -> None:
    """Revoke certificates: add them to the CA's revocation list (crl.pem), re-signed and rewritten."""
    if sum(value is not None for value in (serial, user, service)) != 1:
        usage_error("give one of --serial N, --user NAME or --service HOST")
    number = parse_serial(serial) if serial is not None else None
    revoked = ca_module().revoke(directory, serial=number, user=user, service=service, crl_days=crl_days)
    for record in revoked:
        console.print(f"revoked {record.kind} {record.subject}, serial {record.serial:x}", highlight=False)
    console.print(f"{directory / 'crl.pem'} rewritten: give it to the services", highlight=False)


@ca_app.command("crl")
def crl(directory: Directory, crl_days: CrlDays = 30) -> None:
    """Re-sign the revocation list with a new next update (servers refuse everyone once it has passed)."""
    path = ca_module().refresh_crl(directory, crl_days)
    console.print(f"{path} re-signed, next update in {crl_days} days", highlight=False)


@ca_app.command("list")
def list_certificates(directory: Directory) -> None:
    """List the certificates the CA issued: serial, subject, kind, names, not after, revoked."""
    from rich.table import Table

    table = Table(title=f"certificates of {directory}")
    for column in ("serial", "subject", "kind", "names", "not after", "revoked"):
        table.add_column(column, overflow="fold")
    for record in ca_module().list_issued(directory):
        revoked = f"{record.revoked:%Y-%m-%d %H:%M}" if record.revoked else "no"
        table.add_row(f"{record.serial:x}", record.subject, record.kind, ", ".join(record.names),
                      f"{record.not_after:%Y-%m-%d %H:%M}", revoked)
    console.print(table)
