"""The request service's client under its old name: :mod:`beamstream.service_client` (``Service`` is
:class:`~beamstream.service_client.ServiceClient`; the profile is :mod:`beamstream.profile`). Kept one release for
code that imports it; importing it warns (DeprecationWarning). ``beamstream.Service`` stays, without a warning."""

import warnings

from beamstream.profile import DEFAULT_PROFILE, DEFAULT_URL, Profile, load_profile, profile_path
from beamstream.service_client import (
    DEFAULT_GROUP,
    MAX_LINE,
    PAGE,
    READ_TIMEOUT,
    AmbiguousStreamId,
    Change,
    ServiceClient,
    Stream,
    bounded_lines,
    stream_path,
)

Service = ServiceClient

__all__ = [
    "DEFAULT_GROUP", "DEFAULT_PROFILE", "DEFAULT_URL", "MAX_LINE", "PAGE", "READ_TIMEOUT", "AmbiguousStreamId",
    "Change", "Profile", "Service", "ServiceClient", "Stream", "bounded_lines", "load_profile", "profile_path",
    "stream_path",
]

warnings.warn("beamstream.remote is now beamstream.service_client (Service is ServiceClient; load_profile and "
              "Profile are in beamstream.profile); import them from there", DeprecationWarning, stacklevel=2)
