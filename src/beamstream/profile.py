"""A user's profile: the request service they use and their TLS files, typed once (docs/requests.md, Profiles).

One loader for Python (:meth:`ServiceClient.from_profile <beamstream.service_client.ServiceClient.from_profile>`)
and the command line (``beamstream request``, ``streams``, ``runs``): :func:`service_target` takes each value from
the caller, else its environment variable (:data:`ENVIRONMENT`), else the profile (:func:`load_profile`), else the
default; the profile's TLS files apply only to an ``https://`` service, so a profile made for one does not make a
plain-HTTP service refuse the request.

Below the service client and the service alike; pydantic only (``beamstream.client`` never imports it).
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from beamstream.errors import OptionError, SpecError

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_PROFILE = Path("~/.config/beamstream/profile.yaml")  # or $BEAMSTREAM_PROFILE
ENVIRONMENT = {"service": "BEAMSTREAM_SERVICE", "cert": "BEAMSTREAM_CERT", "key": "BEAMSTREAM_KEY",
               "ca": "BEAMSTREAM_CA"}  # each value's environment variable, read before the profile


class Profile(BaseModel):
    """A user's profile: the service they use and their TLS files, so that they type them once.

    ``service`` is a URL; ``cert``, ``key`` and ``ca`` are PEM files, relative to the profile's folder
    unless absolute (``~`` is expanded). Every entry may be left out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    service: str | None = None
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None


@dataclass(frozen=True, slots=True)
class ServiceTarget:
    """Where a client reaches the request service: its URL, and for one with mutual TLS (``https://``) the user's
    certificate and key and the CA certificate that verifies the service (None: not given)."""

    url: str
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None


def service_target(url: str | None = None, cert: str | Path | None = None, key: str | Path | None = None,
                   ca: str | Path | None = None, *, profile: str | Path | None = None) -> ServiceTarget:
    """The service to reach, and its TLS files: each value as given, else its environment variable
    (``$BEAMSTREAM_SERVICE``, ``$BEAMSTREAM_CERT``, ``$BEAMSTREAM_KEY``, ``$BEAMSTREAM_CA``), else the profile's
    (``profile``, else ``$BEAMSTREAM_PROFILE``, else ``~/.config/beamstream/profile.yaml``: :func:`load_profile`),
    else :data:`DEFAULT_URL` and no TLS files. The profile's TLS files apply only to an ``https://`` service; those
    given or in the environment always apply (the client refuses them for ``http://``).

    OptionError for a profile that is missing (when named), unreadable or invalid, even when every value is given.
    """
    given = {"service": url, "cert": cert, "key": key, "ca": ca}
    values = {name: value if value is not None else (os.environ.get(ENVIRONMENT[name]) or None)
              for name, value in given.items()}
    loaded = load_profile(profile)
    if loaded is not None:
        values["service"] = values["service"] or loaded.service
        if (values["service"] or DEFAULT_URL).startswith("https://"):
            values.update({name: values[name] or getattr(loaded, name) for name in ("cert", "key", "ca")})
    return ServiceTarget(values["service"] or DEFAULT_URL,
                         *(None if values[name] is None else Path(values[name]) for name in ("cert", "key", "ca")))


def profile_path(path: str | Path | None = None) -> tuple[Path, bool]:
    """The profile to read and whether it was named (``path`` or ``$BEAMSTREAM_PROFILE``) rather than the default."""
    if path is not None:
        return Path(path).expanduser(), True
    if os.environ.get("BEAMSTREAM_PROFILE"):
        return Path(os.environ["BEAMSTREAM_PROFILE"]).expanduser(), True
    return DEFAULT_PROFILE.expanduser(), False


def load_profile(path: str | Path | None = None) -> Profile | None:
    """The profile at ``path``, else ``$BEAMSTREAM_PROFILE``, else ``~/.config/beamstream/profile.yaml``.

    None when the default file does not exist. OptionError, naming the file and the entry, for a named
    file that does not exist, one that is not valid (YAML, a mapping of service, cert, key, ca; a
    service that is not http:// or https://; cert without key), or one that others can write (it
    chooses the service you talk to and the CA you trust). A warning when the key it names can be
    read by others.
    """
    from beamstream.spec_input import parse_yaml

    file, named = profile_path(path)
    try:
        text = file.read_text()
        mode = file.stat().st_mode
    except FileNotFoundError:
        if not named:
            return None
        raise OptionError(f"profile {file}: no such file") from None
    except OSError as exc:
        raise OptionError(f"profile {file}: cannot be read: {exc.strerror or exc}") from None
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise OptionError(f"profile {file} can be written by others (mode {stat.S_IMODE(mode):o}): whoever can "
                          f"write it chooses the service you talk to and the CA you trust; chmod go-w {file}")
    try:
        data = parse_yaml(text, str(file))
    except SpecError as exc:
        raise OptionError(f"profile {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise OptionError(f"profile {file}: expected a mapping with keys service, cert, key, ca; "
                          f"got {type(data).__name__}")
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(part) for part in error['loc']) or 'profile'}: {error['msg']}"
                             for error in exc.errors())
        raise OptionError(f"profile {file}: {problems}") from None
    if profile.service is not None and not profile.service.startswith(("http://", "https://")):
        raise OptionError(f"profile {file}: service: expected an http:// or https:// URL, got {profile.service!r}")
    if (profile.cert is None) != (profile.key is None):
        raise OptionError(f"profile {file}: cert and key go together")
    files = {name: (file.parent / value.expanduser()) for name in ("cert", "key", "ca")
             if (value := getattr(profile, name)) is not None}
    profile = profile.model_copy(update=files)
    if profile.key is not None:
        try:
            if profile.key.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                warnings.warn(f"profile {file}: key {profile.key} can be read by others; chmod 600 {profile.key}",
                              stacklevel=2)
        except OSError:
            pass  # a missing key is reported when it is used
    return profile
