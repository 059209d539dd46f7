"""A small certificate authority for mutual TLS: the library behind ``beamstream ca`` (docs/security.md).

A CA directory (mode 0700, yours alone; every operation refuses a looser one) holds::

    ca.key                        the CA's private key (0600): never leaves this directory
    ca.crt                        the CA's self-signed certificate: services and users trust it
    crl.pem                       the revocation list the CA signs, rewritten by every revocation
    issued/SERIAL.pem             every certificate the CA issued (SERIAL in hex), the record :func:`list_issued` reads
    users/NAME.key, NAME.crt      the newest user certificate for NAME and its key (0600)
    services/HOST.key, HOST.crt   the newest service certificate whose first name is HOST, and its key (0600)

Keys are ECDSA P-256 and signatures ECDSA with SHA-256: every TLS stack (OpenSSL, Go, Java, browsers) accepts them
for client and server certificates, in TLS 1.3 and 1.2 alike, where Ed25519 certificates are still refused by
browsers and by some libraries. Serial numbers are random (159 bits). Every file is written atomically
(:mod:`beamstream.atomic`); keys are 0600 whatever ``BEAMSTREAM_FILE_MODE`` says.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from beamstream.atomic import commit, partial_path, write_atomically
from beamstream.errors import AuthorityError
from beamstream.modes import make_dirs

CA_KEY = "ca.key"
CA_CERTIFICATE = "ca.crt"
CRL = "crl.pem"
ISSUED = "issued"
KINDS = {"user": "users", "service": "services"}  # kind of certificate → the folder of its key and certificate

KEY_MODE = 0o600
DIRECTORY_MODE = 0o700
MAX_CA_DAYS = 7305  # 20 years
MAX_DAYS = 825  # the longest a user or service certificate may be valid
DEFAULT_CRL_DAYS = 30
CLOCK_SKEW = timedelta(minutes=5)  # certificates start this long before they are made, for clocks a little behind

USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class Authority:
    """A loaded CA: its directory, private key and certificate."""

    directory: Path
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


@dataclass(frozen=True)
class Issued:
    """One certificate the CA issued, as :func:`list_issued` reports it.

    ``kind`` is ``user`` (extended key usage clientAuth) or ``service`` (serverAuth); ``names`` are a service's
    DNS names and IP addresses (empty for a user); ``revoked`` the time of its revocation, or None.
    """

    serial: int
    subject: str
    kind: str
    names: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    revoked: datetime | None


@dataclass(frozen=True)
class Credentials:
    """What :func:`issue` wrote: the certificate and key files to hand to their holder, and the record."""

    certificate: Path
    key: Path
    issued: Issued


def check_directory(directory: Path) -> None:
    """Refuse a CA directory that is missing, not a directory, someone else's, or reachable by others.

    Raises AuthorityError saying what to fix (e.g. the ``chmod 700`` to run).
    """
    try:
        info = directory.stat()
    except FileNotFoundError:
        raise AuthorityError(f"{directory}: no such CA directory; make one with `beamstream ca init {directory}`")
    if not stat.S_ISDIR(info.st_mode):
        raise AuthorityError(f"{directory} is not a directory")
    if info.st_uid != os.geteuid():
        raise AuthorityError(f"{directory} belongs to uid {info.st_uid}, not to you (uid {os.geteuid()}): "
                             "a CA directory must be its owner's alone")
    if info.st_mode & 0o077:
        raise AuthorityError(f"{directory} is mode {stat.S_IMODE(info.st_mode):04o}: other users could reach the "
                             f"CA's keys; run `chmod 700 {directory}`")


def check_key_file(path: Path) -> None:
    """Refuse a key file that is missing or that others may read or write. Raises AuthorityError saying what to fix."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise AuthorityError(f"{path}: no such key file")
    if mode & 0o077:
        raise AuthorityError(f"{path} is mode {mode:04o}: others may read the key; run `chmod 600 {path}` "
                             "(and if they did, make a new key)")


def make_private_directory(directory: Path) -> None:
    """Create ``directory`` (and missing parents, :func:`beamstream.modes.make_dirs`) with mode 0700; an existing
    one is kept and checked (:func:`check_directory`)."""
    if directory.exists():
        check_directory(directory)
        return
    make_dirs(directory.parent)
    directory.mkdir(mode=DIRECTORY_MODE)
    directory.chmod(DIRECTORY_MODE)  # mkdir's mode is filtered by the umask


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write ``key`` (PEM, PKCS #8, unencrypted) to ``path`` atomically with mode 0600. Raises OSError."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    partial = partial_path(path)
    try:
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, KEY_MODE)
        os.fchmod(descriptor, KEY_MODE)  # a partial file left with another mode, or the umask, change nothing
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        commit(path)
    except OSError:
        partial.unlink(missing_ok=True)
        raise


def pem(certificate: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def validity(days: int, max_days: int, not_before: datetime | None, not_after: datetime | None,
             authority: Authority | None = None) -> tuple[datetime, datetime]:
    """The (start, end) of a new certificate: from now (less :data:`CLOCK_SKEW`) for ``days`` (1 to ``max_days``),
    unless ``not_before`` / ``not_after`` (timezone-aware) say otherwise; never beyond the CA's own end.

    Raises AuthorityError when the period is empty or too long.
    """
    now = datetime.now(timezone.utc)
    if not_after is None and not 1 <= days <= max_days:
        raise AuthorityError(f"days={days}: a certificate is valid for 1 to {max_days} days")
    start = not_before if not_before is not None else now - CLOCK_SKEW
    end = not_after if not_after is not None else now + timedelta(days=days)
    if end <= start:
        raise AuthorityError(f"a certificate's validity must end after it starts ({start:%Y-%m-%d %H:%M} UTC), "
                             f"not at {end:%Y-%m-%d %H:%M} UTC")
    if authority is not None and end > authority.certificate.not_valid_after_utc:
        ca_end = authority.certificate.not_valid_after_utc
        raise AuthorityError(f"the certificate would outlive its CA (valid until {ca_end:%Y-%m-%d}); "
                             f"give at most {max(0, (ca_end - now).days)} days")
    return start, end


def init_ca(directory: Path, name: str = "beamstream CA", days: int = 3650, *,
            crl_days: int = DEFAULT_CRL_DAYS) -> Authority:
    """Make a CA in ``directory`` (created 0700, or an existing safe one): a key, a self-signed certificate with
    subject CN ``name`` valid ``days`` (1 to 20 years' worth), and an empty revocation list valid ``crl_days``.

    Raises AuthorityError when ``directory`` already holds a CA, is unsafe, or a value is out of range.
    """
    directory = Path(directory)
    if not name.strip():
        raise AuthorityError("a CA needs a name (its certificate's common name)")
    start, end = validity(days, MAX_CA_DAYS, None, None)
    make_private_directory(directory)
    for existing in (CA_KEY, CA_CERTIFICATE):
        if (directory / existing).exists():
            raise AuthorityError(f"{directory / existing} exists: {directory} already holds a CA")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256()))
    write_key(directory / CA_KEY, key)
    write_atomically(directory / CA_CERTIFICATE, pem(certificate))
    make_private_directory(directory / ISSUED)
    authority = Authority(directory, key, certificate)
    sign_crl(authority, [], 1, crl_days)
    return authority


def load_authority(directory: Path) -> Authority:
    """The CA in ``directory``, after checking the directory and key file are safe and the key fits the certificate.

    Raises AuthorityError naming what is missing, unsafe or mismatched.
    """
    directory = Path(directory)
    check_directory(directory)
    check_key_file(directory / CA_KEY)
    try:
        certificate = x509.load_pem_x509_certificate((directory / CA_CERTIFICATE).read_bytes())
    except FileNotFoundError:
        raise AuthorityError(f"{directory / CA_CERTIFICATE}: no such file; is {directory} a CA directory?")
    key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != certificate.public_key():
        raise AuthorityError(f"{directory / CA_KEY} is not the key of {directory / CA_CERTIFICATE}")
    return Authority(directory, key, certificate)


def service_name(host: str) -> x509.GeneralName:
    """``host`` as a subject alternative name: an IP address, or a DNS name (lower-cased).

    Raises AuthorityError for anything else (wildcards included).
    """
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.lower().rstrip(".")
    if len(name) > 253 or not all(DNS_LABEL.fullmatch(label) for label in name.split(".")):
        raise AuthorityError(f"service host {host!r}: expected a DNS name (letters, digits, '-' between dots) "
                             "or an IP address")
    return x509.DNSName(name)


def issue(directory: Path, *, user: str | None = None, service: str | Sequence[str] | None = None,
          days: int = 365, not_before: datetime | None = None, not_after: datetime | None = None) -> Credentials:
    """Make a key and a certificate signed by the CA in ``directory``, for a ``user`` or a ``service`` (exactly one).

    A user certificate has subject CN ``user`` (letters, digits and ``._@-``) and extended key usage clientAuth;
    a service certificate names every host in ``service`` (DNS names, IP addresses) as subject alternative names,
    the first also as CN, with extended key usage serverAuth. It is valid ``days`` (1 to 825) from now, or from
    ``not_before`` to ``not_after`` when given (timezone-aware; tests make expired certificates so), never beyond
    the CA. The key and certificate go to ``users/NAME.{key,crt}`` or ``services/HOST.{key,crt}``, replacing an
    earlier pair for that name (which stays valid until it expires or is revoked); a copy of the certificate to
    ``issued/SERIAL.pem``.

    Raises AuthorityError for an unsafe CA directory, a bad name or validity, or not exactly one of user/service.
    """
    if (user is None) == (service is None):
        raise AuthorityError("issue a certificate for a user or for a service: give exactly one")
    authority = load_authority(directory)
    if user is not None:
        if not USER_NAME.fullmatch(user):
            raise AuthorityError(f"user name {user!r}: use letters, digits and . _ @ - (at most 64, starting with "
                                 "a letter or digit)")
        kind, subject, names, usage = "user", user, [], ExtendedKeyUsageOID.CLIENT_AUTH
    else:
        hosts = [service] if isinstance(service, str) else list(service)
        if not hosts:
            raise AuthorityError("a service certificate needs at least one host name or IP address")
        names = [service_name(host) for host in hosts]
        kind, subject, usage = "service", str(names[0].value), ExtendedKeyUsageOID.SERVER_AUTH
    start, end = validity(days, MAX_DAYS, not_before, not_after, authority)
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key_id = authority.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(authority.certificate.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), critical=False))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(authority.key, hashes.SHA256())
    directory = authority.directory
    make_private_directory(directory / ISSUED)
    write_atomically(directory / ISSUED / f"{certificate.serial_number:x}.pem", pem(certificate))
    folder = directory / KINDS[kind]
    make_private_directory(folder)
    write_key(folder / f"{subject}.key", key)
    write_atomically(folder / f"{subject}.crt", pem(certificate))
    return Credentials(folder / f"{subject}.crt", folder / f"{subject}.key", describe(certificate, {}))


def describe(certificate: x509.Certificate, revoked: dict[int, datetime]) -> Issued:
    """``certificate`` as an :class:`Issued` record, revoked when its serial is in ``revoked``."""
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    kind = "service" if ExtendedKeyUsageOID.SERVER_AUTH in usages else "user"
    try:
        alternatives = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(str(name.value) for name in alternatives)
    except x509.ExtensionNotFound:
        names = ()
    subject = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return Issued(certificate.serial_number, str(subject), kind, names, certificate.not_valid_before_utc,
                  certificate.not_valid_after_utc, revoked.get(certificate.serial_number))


def load_crl(authority: Authority) -> x509.CertificateRevocationList:
    """The CA's revocation list, checked to be signed by it. Raises AuthorityError when missing or not its own."""
    path = authority.directory / CRL
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError:
        raise AuthorityError(f"{path}: no such file; restore it from a backup (the revocations are recorded there only)")
    if not crl.is_signature_valid(authority.certificate.public_key()):
        raise AuthorityError(f"{path} is not signed by {authority.directory / CA_CERTIFICATE}")
    return crl


def revocations(crl: x509.CertificateRevocationList) -> dict[int, datetime]:
    """Serial number → time of revocation, for every entry of ``crl``."""
    return {entry.serial_number: entry.revocation_date_utc for entry in crl}


def sign_crl(authority: Authority, entries: Sequence[x509.RevokedCertificate], number: int, days: int) -> Path:
    """Sign a revocation list of ``entries`` (CRL number ``number``, next update in ``days``) and write it to
    ``crl.pem`` atomically; returns its path. Raises AuthorityError when ``days`` is out of 1 to 365."""
    if not 1 <= days <= 365:
        raise AuthorityError(f"crl_days={days}: a revocation list is valid for 1 to 365 days")
    now = datetime.now(timezone.utc)
    ca_key_id = authority.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (x509.CertificateRevocationListBuilder().issuer_name(authority.certificate.subject)
               .last_update(now).next_update(now + timedelta(days=days))
               .add_extension(x509.CRLNumber(number), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id),
                              critical=False))
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    path = authority.directory / CRL
    write_atomically(path, pem(builder.sign(authority.key, hashes.SHA256())))
    return path


def crl_number(crl: x509.CertificateRevocationList) -> int:
    """The sequence number of ``crl`` (each re-signing adds one)."""
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def list_issued(directory: Path) -> list[Issued]:
    """Every certificate the CA in ``directory`` issued, oldest first, with its revocation (if any).

    Raises AuthorityError for an unsafe or missing CA.
    """
    authority = load_authority(directory)
    revoked = revocations(load_crl(authority))
    records = [describe(x509.load_pem_x509_certificate(path.read_bytes()), revoked)
               for path in (authority.directory / ISSUED).glob("*.pem")]
    return sorted(records, key=lambda record: (record.not_before, record.serial))


def revoke(directory: Path, *, serial: int | None = None, user: str | None = None, service: str | None = None,
           crl_days: int = DEFAULT_CRL_DAYS) -> list[Issued]:
    """Revoke the certificate ``serial``, or every unrevoked certificate of ``user`` or of ``service`` (its first
    host name), exactly one of the three: add them to the revocation list, re-sign it (next update in
    ``crl_days``) and rewrite ``crl.pem`` atomically. Returns the certificates revoked.

    Raises AuthorityError when nothing issued by this CA matches, or the serial is already revoked.
    """
    if sum(value is not None for value in (serial, user, service)) != 1:
        raise AuthorityError("revoke a certificate by serial, user or service: give exactly one")
    authority = load_authority(directory)
    crl = load_crl(authority)
    issued = list_issued(directory)
    if serial is not None:
        targets = [record for record in issued if record.serial == serial]
        if not targets:
            raise AuthorityError(f"no certificate with serial {serial:x} was issued by this CA "
                                 f"(`beamstream ca list {directory}` shows them)")
        if targets[0].revoked is not None:
            raise AuthorityError(f"serial {serial:x} was already revoked on {targets[0].revoked:%Y-%m-%d %H:%M} UTC")
    else:
        kind, name = ("user", user) if user is not None else ("service", str(service_name(str(service)).value))
        targets = [record for record in issued
                   if record.kind == kind and record.subject == name and record.revoked is None]
        if not targets:
            raise AuthorityError(f"no unrevoked certificate of {kind} {name!r} (`beamstream ca list {directory}` "
                                 "shows them)")
    now = datetime.now(timezone.utc)
    added = [x509.RevokedCertificateBuilder().serial_number(record.serial).revocation_date(now).build()
             for record in targets]
    sign_crl(authority, [*crl, *added], crl_number(crl) + 1, crl_days)
    return [Issued(record.serial, record.subject, record.kind, record.names, record.not_before, record.not_after,
                   now) for record in targets]


def refresh_crl(directory: Path, crl_days: int = DEFAULT_CRL_DAYS) -> Path:
    """Re-sign the revocation list as it is with a next update ``crl_days`` from now (a server that checks
    revocation refuses everyone once the list's next update has passed); returns its path."""
    authority = load_authority(directory)
    crl = load_crl(authority)
    return sign_crl(authority, list(crl), crl_number(crl) + 1, crl_days)
