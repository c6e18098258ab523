"""
The sessions of each user, for a L{txsession.Site} without a store: which sessions
C{renewSession(request, user=...)} bound to a user, so that the site can list them and end
them (C{userSessions}, C{logoutUser}, C{endUserSession}). A site with a store keeps this index
in the store instead, shared by every process.

Each bound session has an opaque id: random, made when the session is bound, and unrelated
to its cookie value, so a page listing a user's sessions never shows a session id. The index
holds only live sessions: a session leaves it when its C{expire()} runs, whatever the reason.
"""

from __future__ import annotations

import secrets
import weakref
from functools import partial
from typing import Any

from twisted.logger import Logger

_log = Logger()


class _Binding:
    __slots__ = ("user", "id", "created")

    def __init__(self, user: str, id: str, created: float) -> None:
        self.user = user
        self.id = id
        self.created = created


class UserIndex:
    """
    Live sessions by user, in one process.
    """

    def __init__(self) -> None:
        self._byUser: dict[str, dict[str, Any]] = {}
        self._bindings: dict[Any, _Binding] = {}

    def bind(self, session: Any, user: str, created: float) -> None:
        """
        Bind C{session} to C{user} (in place of any user it was bound to), with a new opaque
        id; C{created} is the time it counts as made.
        """
        old = self._bindings.get(session)
        if old is None:
            session.expireCallbacks.insert(
                0, partial(_ended, weakref.ref(self), weakref.ref(session))
            )
        else:
            self._forget(session, old)
        binding = self._bindings[session] = _Binding(user, secrets.token_hex(16), created)
        self._byUser.setdefault(user, {})[binding.id] = session

    def userOf(self, session: Any) -> str | None:
        binding = self._bindings.get(session)
        return None if binding is None else binding.user

    def records(self, user: str) -> list[dict[str, Any]]:
        """
        One record for each live session of C{user}.
        """
        records = []
        for id, session in self.sessions(user).items():
            binding = self._bindings[session]
            records.append({"id": id, "created": binding.created, "lastUsed": session.lastModified})
        return records

    def sessions(self, user: str) -> dict[str, Any]:
        """
        The live sessions of C{user}, by opaque id.
        """
        return {id: session for id, session in self._byUser.get(user, {}).items() if _live(session)}

    def ended(self, session: Any) -> None:
        binding = self._bindings.pop(session, None)
        if binding is not None:
            self._forget(session, binding)

    def _forget(self, session: Any, binding: _Binding) -> None:
        sessions = self._byUser.get(binding.user)
        if sessions is not None and sessions.get(binding.id) is session:
            del sessions[binding.id]
            if not sessions:
                del self._byUser[binding.user]

    def __len__(self) -> int:
        return len(self._bindings)


def _ended(indexRef: Any, sessionRef: Any) -> None:
    index, session = indexRef(), sessionRef()
    if index is not None and session is not None:
        index.ended(session)


def _live(session: Any) -> bool:
    return session.site.sessions.get(session.uid) is session


def endSessions(index: UserIndex, sessions: list[Any]) -> int:
    """
    C{expire()} each of C{sessions} that is still live; how many were. A failing C{expire}
    (an expire callback that raised) is logged, and the session has ended all the same.
    """
    ended = 0
    for session in sessions:
        if not _live(session):
            continue
        try:
            session.expire()
        except Exception:
            _log.failure("while ending a session of a user")
        index.ended(session)
        ended += 1
    return ended
