"""Who is asking the hub over HTTP: operators, their passwords and their tokens.

An operator (a `User`) has one role from `hub.access` and, for the venue role, the one
registered venue it owns. They prove who they are with a password (`login`, which gives
a 12-hour session token) or with an API token made on the command line
(`issue_api_token`, N days). Each request then carries the token, and `authenticate`
turns it back into a `User`, whose `principal()` is what `hub.access` checks:

    >>> user = create_user(store, "ytepleiku", "Y tế Pleiku", Role.TRACER, None,
    ...                    "a long passphrase", now)                        # doctest: +SKIP
    >>> issued = login(store, "ytepleiku", "a long passphrase", now)        # doctest: +SKIP
    >>> authenticate(store, issued.token, now).principal(Channel.API, "10.0.0.7")  # doctest: +SKIP
    Principal(role=<Role.TRACER: 'tracer'>, venue_id=None, account='ytepleiku', ...)

What is stored, and why:

* Passwords as scrypt at one of OWASP's current parameter sets (n=2**14, r=8, p=5:
  16 MiB a check; the set n=2**17, p=1 asks the same work of a guesser but 128 MiB a
  check, which a burst of logins on a small hub would feel; 16-byte random salt, 32-byte
  key) in a self-describing string,
  ``scrypt$16384$8$5$<salt>$<key>`` (base64), so old hashes
  still verify; a login whose hash was made at a lower cost stores it again at the
  current one (`login`). Compared in constant time.
* Tokens are 32 random bytes (``secrets.token_urlsafe``), shown once; the store keeps
  only their SHA-256. A token has 256 bits of entropy, so a fast hash is enough (there
  is nothing to brute-force), and a copy of the database (a backup, a stolen disk)
  holds no token anyone can present.
* A token is refused once revoked (`logout`), expired, or when its user is inactive or
  gone; `authenticate` checks all three on every request, so disabling a user takes
  effect at once.

Every login (ok, failed, locked), logout, token made or revoked and user change is an
audit entry naming the account (`hub.access.record_event`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from doorscan.errors import Refusal
from doorscan.timefmt import from_ms, to_ms
from doorscan.wire import ID_PATTERN
from hub.access import Channel, Principal, PrincipalError, Role, record_event
from hub.login_throttle import LoginThrottle
from hub.store import AuditLog, StoredToken, StoredUser, UserStore
from hub.store.base import Registry

__all__ = [
    "API_TOKEN_MAX_DAYS",
    "MIN_PASSWORD_CHARS",
    "SESSION_HOURS",
    "AuthStore",
    "IssuedToken",
    "LoginOutcome",
    "User",
    "authenticate",
    "change_role",
    "checked_login",
    "create_user",
    "hash_password",
    "hash_token",
    "issue_api_token",
    "login",
    "logout",
    "reset_password",
    "revoke_token",
    "set_active",
    "unlock",
    "verify_password",
]

SESSION_HOURS = 12
"""A working day plus margin: a tracer logs in once per shift; a forgotten browser expires."""
API_TOKEN_MAX_DAYS = 3650
MIN_PASSWORD_CHARS = 12
"""A passphrase, not a word: scrypt slows guessing, it does not make a short password strong."""

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 5
SCRYPT_SALT_BYTES, SCRYPT_KEY_BYTES = 16, 32
TOKEN_BYTES = 32
_SCHEME = "scrypt"
_USER_ID_RE = re.compile(ID_PATTERN)


class AuthStore(UserStore, Registry, AuditLog, Protocol):
    """A store with users, tokens and failed logins, the venue registry (the venue role
    needs it) and the audit log (every account event is recorded)."""


@dataclass(frozen=True)
class User:
    """An authenticated operator: who, and what role `hub.access` will check."""

    user_id: str
    display_name: str
    role: Role
    venue_id: str | None

    def principal(self, channel: Channel, address: str | None) -> Principal:
        """This user asking over `channel` from `address`: what `hub.access` checks."""
        return Principal(
            self.role, self.venue_id, account=self.user_id, channel=channel, address=address
        )


@dataclass(frozen=True)
class IssuedToken:
    """A token just made. `token` is shown once and is not kept anywhere by the hub."""

    token: str
    user: User
    expires_at: datetime


# -- passwords ------------------------------------------------------------------------------


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    # maxmem: scrypt needs 128*r*n bytes (16 MiB here); allow twice that for raised costs.
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=256 * r * n + 2**20
    )


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$key`` with a fresh salt; see the module docstring."""
    salt = secrets.token_bytes(SCRYPT_SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_KEY_BYTES)
    b64 = base64.b64encode
    return f"{_SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(key).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches `stored`; False (never an error) for a malformed string."""
    try:
        scheme, n, r, p, salt_b64, key_b64 = stored.split("$")
        if scheme != _SCHEME:
            return False
        salt, key = base64.b64decode(salt_b64), base64.b64decode(key_b64)
        candidate = _scrypt(password, salt, int(n), int(r), int(p), len(key))
    except ValueError:
        return False
    return hmac.compare_digest(candidate, key)


# A real hash of a password nobody has: verifying against it costs what a real check
# costs, so a login for an unknown user takes as long as one with a wrong password.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


# -- users ------------------------------------------------------------------------------------


def _user(stored: StoredUser) -> User:
    return User(stored.user_id, stored.display_name, Role(stored.role), stored.venue_id)


def create_user(
    store: AuthStore,
    user_id: str,
    display_name: str,
    role: Role,
    venue_id: str | None,
    password: str,
    now: datetime,
    *,
    by: Principal | None = None,
) -> User:
    """Add an active user; `Refusal` for a bad id, role/venue mismatch or short password.

    Audited as ``user_add``, by `by` (the operator; None when the hub sets itself up).

    The venue role must name a registered venue (the foreign key would refuse it too,
    but with a message nobody can act on). `hub.store.UserExists` if the
    id is taken.
    """
    if not _USER_ID_RE.fullmatch(user_id):
        raise Refusal(
            "bad_user_id",
            f"{user_id[:40]!r} is not a user id: lower-case letters, digits, '-' and '_', "
            "up to 63 characters, starting with a letter or digit",
        )
    display_name = " ".join(display_name.split())
    if not display_name:
        raise Refusal("no_name", "give the user's name as people will see it")
    try:
        user = User(user_id, display_name, Role(role), venue_id)
        user.principal(Channel.CLI, None)
    except (PrincipalError, ValueError) as exc:
        raise Refusal("bad_role", str(exc)) from None
    if venue_id is not None and store.venue(venue_id) is None:
        raise Refusal("unknown_venue", f"no venue {venue_id!r} is registered")
    if len(password) < MIN_PASSWORD_CHARS:
        raise Refusal(
            "short_password", f"the password needs at least {MIN_PASSWORD_CHARS} characters"
        )
    store.add_user(
        StoredUser(
            user_id=user_id,
            display_name=display_name,
            role=str(user.role),
            venue_id=venue_id,
            password_hash=hash_password(password),
            active=True,
            created_at_ms=to_ms(now),
        )
    )
    record_event(store, "user_add", user_id, now, by=by, role=str(user.role), venue_id=venue_id)
    return user


# -- tokens -----------------------------------------------------------------------------------


def hash_token(token: str) -> str:
    """What the store keeps of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _issue(
    store: AuthStore, user: User, kind: str, lifetime: timedelta, now: datetime
) -> IssuedToken:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    expires = now + lifetime
    store.add_token(
        StoredToken(hash_token(token), user.user_id, kind, to_ms(now), to_ms(expires), False)
    )
    return IssuedToken(token, user, from_ms(to_ms(expires)))


def _current_cost(stored_hash: str) -> bool:
    return stored_hash.split("$")[1:4] == [str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P)]


def login(store: AuthStore, user_id: str, password: str, now: datetime) -> IssuedToken | None:
    """A session token (`SESSION_HOURS`) for the right password of an active user, else None.

    The answer does not tell an unknown user from a wrong password or a disabled user,
    and takes as long either way. A right password hashed at an older, lower cost is
    hashed again at the current one. Not throttled and not audited: `checked_login` is.
    """
    stored = store.user(user_id) if _USER_ID_RE.fullmatch(user_id) else None
    matches = verify_password(password, stored.password_hash if stored else _DUMMY_HASH)
    if stored is None or not matches or not stored.active:
        return None
    if not _current_cost(stored.password_hash):
        store.set_password_hash(stored.user_id, hash_password(password))
    return _issue(store, _user(stored), "session", timedelta(hours=SESSION_HOURS), now)


@dataclass(frozen=True)
class LoginOutcome:
    """A throttled login: a token, or None; `wait_s` > 0 when refused before any check."""

    issued: IssuedToken | None
    wait_s: float = 0.0


def checked_login(
    store: AuthStore,
    throttle: LoginThrottle,
    user_id: str,
    password: str,
    *,
    channel: Channel,
    address: str,
    now: datetime,
) -> LoginOutcome:
    """`login` behind the throttle, audited as ``login``, ``login_failed`` or ``login_locked``.

    A locked attempt is refused before the password is checked, so guessing gains
    nothing from it. `address` is the client's (`hub.web.deps.client_address`).
    """
    attempt = throttle.reserve(store, user_id, address, now)
    if attempt.wait_s > 0:
        record_event(store, "login_locked", user_id, now, channel=str(channel), address=address)
        return LoginOutcome(None, attempt.wait_s)
    issued: IssuedToken | None = None
    try:
        issued = login(store, user_id, password, now)
    finally:
        throttle.settle(store, attempt, ok=issued is not None)
    action = "login" if issued else "login_failed"
    record_event(store, action, user_id, now, channel=str(channel), address=address)
    return LoginOutcome(issued)


def issue_api_token(
    store: AuthStore, user_id: str, days: int, now: datetime, *, by: Principal | None = None
) -> IssuedToken:
    """An API token for scripts, valid `days` days; `Refusal` for an unknown or inactive user.

    Audited as ``token_create`` (the first 12 hex digits of its hash name it there)."""
    if not 1 <= days <= API_TOKEN_MAX_DAYS:
        raise Refusal("bad_days", f"days must be 1..{API_TOKEN_MAX_DAYS}, not {days}")
    stored = store.user(user_id)
    if stored is None:
        raise Refusal("unknown_user", f"no user {user_id!r}")
    if not stored.active:
        raise Refusal("inactive_user", f"the user {user_id!r} is disabled")
    issued = _issue(store, _user(stored), "api", timedelta(days=days), now)
    record_event(
        store, "token_create", user_id, now, by=by, token=hash_token(issued.token)[:12], days=days
    )
    return issued


def authenticate(store: AuthStore, token: str, now: datetime) -> User | None:
    """The user a token belongs to, or None if it is unknown, revoked, expired or orphaned."""
    if not token or len(token) > 256:
        return None
    stored = store.token(hash_token(token))
    if stored is None or stored.revoked or to_ms(now) >= stored.expires_at_ms:
        return None
    owner = store.user(stored.user_id)
    if owner is None or not owner.active:
        return None
    return _user(owner)


def logout(store: AuthStore, token: str, now: datetime, by: Principal) -> None:
    """Revoke the token (an unknown one is ignored: logging out twice is not an error)."""
    if token and len(token) <= 256 and store.revoke_token(hash_token(token)):
        record_event(store, "logout", by.account, now, by=by)


def revoke_token(store: AuthStore, token_hash: str, now: datetime, by: Principal) -> bool:
    """Revoke a token by its hash (an admin ending someone's session); audited."""
    stored = store.token(token_hash)
    if stored is None or not store.revoke_token(token_hash):
        return False
    record_event(
        store, "token_revoke", stored.user_id, now, by=by, token=token_hash[:12], kind=stored.kind
    )
    return True


# -- an admin's changes to accounts (each audited, naming who made it) -------------------------


def set_active(store: AuthStore, user_id: str, active: bool, now: datetime, by: Principal) -> None:
    """Disable a user (their tokens stop working at once) or enable them again."""
    if not store.set_user_active(user_id, active):
        raise Refusal("unknown_user", f"no user {user_id!r}")
    record_event(store, "user_change", user_id, now, by=by, active=active)


def reset_password(
    store: AuthStore, user_id: str, password: str, now: datetime, by: Principal
) -> None:
    """Give a user a new password (at least `MIN_PASSWORD_CHARS` characters)."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise Refusal(
            "short_password", f"the password needs at least {MIN_PASSWORD_CHARS} characters"
        )
    if not store.set_password_hash(user_id, hash_password(password)):
        raise Refusal("unknown_user", f"no user {user_id!r}")
    record_event(store, "user_change", user_id, now, by=by, change="password reset")


def change_role(
    store: AuthStore,
    user_id: str,
    role: Role,
    venue_id: str | None,
    now: datetime,
    by: Principal,
) -> None:
    """Give a user another role (the venue role with a registered venue)."""
    try:
        Principal(role, venue_id, account=user_id, channel=Channel.CLI)
    except PrincipalError as exc:
        raise Refusal("bad_role", str(exc)) from None
    if venue_id is not None and store.venue(venue_id) is None:
        raise Refusal("unknown_venue", f"no venue {venue_id!r} is registered")
    if not store.set_user_role(user_id, str(role), venue_id):
        raise Refusal("unknown_user", f"no user {user_id!r}")
    record_event(store, "user_change", user_id, now, by=by, role=str(role), venue_id=venue_id)


def unlock(
    store: AuthStore, throttle: LoginThrottle, user_id: str, now: datetime, by: Principal
) -> int:
    """Lift a lock on a user's logins (forget their failures); how many were forgotten."""
    forgotten = throttle.unlock(store, user_id)
    record_event(store, "unlock", user_id, now, by=by, failures=forgotten)
    return forgotten
