"""Who may do what on the request service: the authorization policy, independent of how identity is proven.

The policy is a YAML file (the setting ``policy_file``)::

    admins: [carol]              # may see, read and cancel every stream, and request any data
    readers:                     # identity: the experiments it may read (names or glob patterns)
      alice: [xpptut15, "mfx*"]
      bob: ["cxi*"]

With no policy file, everyone may request any experiment and do everything with their own streams
(and nobody with anyone else's). With one, :meth:`Authorizer.may_request` allows an identity the
experiments it reads and, unless it is an admin, only data the service picks for such an
experiment (a catalogue run) or data that is no facility's (a simulated source); and
:meth:`Authorizer.may_see` lets a stream be seen by its owner and the admins only.

The file is checked on each decision (one ``stat``) and read again only when it changed (its
inode, modification time or size). A file that can no longer be read or is no longer valid keeps
the last good policy in force, and is logged at ERROR once per change; a bad file at start stops
the service (:class:`PolicyError`). Write a new policy to a temporary file and rename it over the old
one, so that no decision sees it half written.

Every decision, allowed (INFO) or refused (WARNING), is logged as one line of this module's logger:
who, what, and why.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from beamstream.errors import SpecError
from beamstream.service.store import JobStore, StreamNotFound, StreamRecord
from beamstream.spec_input import parse_yaml, read_spec_text

logger = logging.getLogger(__name__)

Identity = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^\S(.*\S)?$")]
ExperimentPattern = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.*?\[\]!-]+$")]


class PolicyError(SpecError):
    """A policy file that cannot be read or is not valid; the message names the file and the bad entry."""


class PolicyModel(BaseModel):
    """A policy file's contents.

    Attributes:
        admins: identities that may see, read and cancel every stream and request any data.
        readers: for each identity, the experiments it may read: names, or glob patterns (``xpp*``,
            ``mfx1234?``) matched case-sensitively against the whole name.
    """

    model_config = ConfigDict(extra="forbid")

    admins: list[Identity] = Field(default_factory=list)
    readers: dict[Identity, list[ExperimentPattern]] = Field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """An authorization decision: why it was made (for the log: it may name the policy's entries) and, for a
    refusal, what the caller is told (it names what was refused, not the policy)."""

    allowed: bool
    why: str
    told: str = ""


@dataclass(frozen=True)
class Policy:
    """The decisions of one version of a policy (``None`` model: no policy file, the first-run default)."""

    model: PolicyModel | None

    def is_admin(self, identity: str) -> bool:
        return self.model is not None and identity in self.model.admins

    def may_request(self, identity: str, experiment: str | None, *, own_data: bool) -> Decision:
        """May ``identity`` request a stream labelled ``experiment`` that reads ``own_data`` (facility data that
        is not a catalogue run of ``experiment``: files the request names, or data its source finds itself)?"""
        if self.model is None:
            return Decision(True, "no policy file: everyone may request any data")
        if self.is_admin(identity):
            return Decision(True, f"{identity} is an admin")
        if experiment is not None:
            patterns = [pattern for pattern in self.model.readers.get(identity, [])
                        if fnmatch.fnmatchcase(experiment, pattern)]
            if not patterns:
                return Decision(False, f"{identity} may read no experiment matching {experiment!r}",
                                f"you may not read experiment {experiment!r}")
            if not own_data:
                return Decision(True, f"{identity} may read experiments matching {patterns[0]!r}")
        if own_data:
            return Decision(False, "the request reads data that is not a catalogue run of an experiment "
                                   "(files it names, or data its source finds): admins only",
                            "only admins may request data other than a catalogue run of an experiment you may "
                            "read (give experiment and run, and name no files) or a simulated source")
        return Decision(True, "a simulated source reads no facility data")

    def may_open_any_path(self, identity: str) -> Decision:
        """May ``identity`` make a job read or write any path the service's user may (not only the files of the
        experiment's runs and calibration folder, and its stream's own folder)? Admins, and everyone without a
        policy file."""
        if self.model is None:
            return Decision(True, "no policy file: everyone may request any data")
        if self.is_admin(identity):
            return Decision(True, f"{identity} is an admin")
        return Decision(False, f"{identity} is not an admin", "only admins may name other paths")

    def may_see(self, identity: str, stream_owner: str) -> Decision:
        """May ``identity`` see (and read, follow, cancel) a stream of ``stream_owner``?"""
        if identity == stream_owner:
            return Decision(True, f"{identity} owns it")
        if self.is_admin(identity):
            return Decision(True, f"{identity} is an admin")
        return Decision(False, f"it is {stream_owner}'s and {identity} is not an admin")

    def may_have_credentials(self, identity: str, stream_owner: str) -> Decision:
        """May ``identity`` have the credentials (the key) of a stream of ``stream_owner``? Its owner only: not
        even an admin, who may follow, cancel and relay any stream, but reads its payloads only if the owner
        shares the key (docs/security.md, Stream credentials)."""
        if identity == stream_owner:
            return Decision(True, f"{identity} owns it")
        return Decision(False, f"it is {stream_owner}'s, and credentials go to a stream's owner only")


def load_policy(path: Path) -> PolicyModel:
    """The policy in the YAML file ``path``; PolicyError naming the file and the bad entry."""
    try:
        data = parse_yaml(read_spec_text(path), str(path))
    except SpecError as exc:
        raise PolicyError(str(exc)) from None
    if data is None:
        raise PolicyError(f"{path}: is empty; a policy names its admins and readers (an empty file would allow "
                          "nobody anything: write 'admins: []' to mean that)")
    try:
        return PolicyModel.model_validate(data)
    except ValidationError as exc:
        raise PolicyError("; ".join(f"{path}: {'.'.join(map(str, error['loc'])) or 'top level'}: {error['msg']} "
                                    f"(got {error['input']!r})" for error in exc.errors())) from None


class Authorizer:
    """The decisions of the service: under the policy file ``path`` (None: no policy), each one logged.

    Raises PolicyError at construction for a policy file that cannot be read or is not valid.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None  # the file's (inode, mtime, size) last read
        self._policy = Policy(None if path is None else load_policy(path))
        if path is not None:
            self._seen = _signature(path)

    @property
    def policy(self) -> Policy:
        """The policy in force: the file's, read again if it changed since it was last read; the last good one
        while the file cannot be read or is not valid."""
        if self.path is None:
            return self._policy
        with self._lock:
            try:
                seen = _signature(self.path)
            except OSError as exc:
                seen = None
                if self._seen is not None:
                    logger.error("the policy file %s cannot be read (%s); the last good policy stays in force",
                                 self.path, exc.strerror)
            if seen is not None and seen != self._seen:
                try:
                    self._policy = Policy(load_policy(self.path))
                    logger.info("policy reloaded from %s", self.path)
                except PolicyError as exc:
                    logger.error("the policy file %s is not valid; the last good policy stays in force: %s",
                                 self.path, exc)
            self._seen = seen
            return self._policy

    def is_admin(self, identity: str) -> bool:
        return self.policy.is_admin(identity)

    def may_request(self, identity: str, experiment: str | None, *, own_data: bool) -> Decision:
        """:meth:`Policy.may_request`, logged."""
        what = f"request a stream of experiment {experiment!r}" if experiment else "request a stream"
        return _logged(identity, what, self.policy.may_request(identity, experiment, own_data=own_data))

    def may_open_any_path(self, identity: str) -> Decision:
        """:meth:`Policy.may_open_any_path`, logged."""
        return _logged(identity, "name any path", self.policy.may_open_any_path(identity))

    def may_see(self, identity: str, stream_owner: str, *, action: str, stream_id: str) -> Decision:
        """:meth:`Policy.may_see`, logged as ``action`` (``see``, ``cancel``, ...) on stream ``stream_id``."""
        return _logged(identity, f"{action} stream {stream_id}", self.policy.may_see(identity, stream_owner))

    def visible_stream(self, store: JobStore, stream_id: str, identity: str, *, action: str) -> StreamRecord:
        """The stream ``stream_id`` if ``identity`` may see it (the decision logged as ``action``); StreamNotFound
        alike for an unknown stream and for one it may not see, so that its existence is not revealed."""
        record = store.get(stream_id)
        if not self.may_see(identity, record.owner, action=action, stream_id=stream_id).allowed:
            raise StreamNotFound(stream_id)
        return record

    def owned_stream(self, store: JobStore, stream_id: str, identity: str, *, action: str) -> StreamRecord:
        """The stream ``stream_id`` if ``identity`` owns it (:meth:`Policy.may_have_credentials`, logged as
        ``action``); StreamNotFound alike for an unknown stream and for anyone else's, admins' included."""
        record = store.get(stream_id)
        decision = self.policy.may_have_credentials(identity, record.owner)
        if not _logged(identity, f"{action} stream {stream_id}", decision).allowed:
            raise StreamNotFound(stream_id)
        return record

    def may_list(self, identity: str, owner: str | None) -> Decision:
        """May ``identity`` list the streams of ``owner`` (None: of everyone it may see)? Admins: anyone's;
        others: their own."""
        policy = self.policy
        what = f"list the streams of {owner}" if owner else "list streams"
        if owner is None:
            why = f"{identity} is an admin: all" if policy.is_admin(identity) else f"{identity}'s own only"
            return _logged(identity, what, Decision(True, why))
        return _logged(identity, what, policy.may_see(identity, owner))

    def may_read_experiment(self, identity: str, experiment: str) -> Decision:
        """May ``identity`` see the runs of ``experiment``? Those who may request a catalogue run of it."""
        decision = self.policy.may_request(identity, experiment, own_data=False)
        return _logged(identity, f"list the runs of experiment {experiment!r}", decision)


def _signature(path: Path) -> tuple[int, int, int]:
    info = os.stat(path)
    return info.st_ino, info.st_mtime_ns, info.st_size


def _logged(identity: str, what: str, decision: Decision) -> Decision:
    if decision.allowed:
        logger.info("allowed %s to %s: %s", identity, what, decision.why)
    else:
        logger.warning("refused %s to %s: %s", identity, what, decision.why)
    return decision
