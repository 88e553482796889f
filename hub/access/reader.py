"""`AccessControlledStore`: the one reader the CLI, the API and the dashboard read through.

The hub holds names and ID numbers. Reads go through this class, never through the raw
store: each caller builds a `Principal` (who, over which channel) and asks here, which
refuses (`Forbidden`), masks for venue owners (MoH decision 2666/QĐ-BYT), and writes
the audit entry naming the account (`hub.access.entries`).

    >>> reader = AccessControlledStore(store, owner)                              # doctest: +SKIP
    >>> listing = reader.visitors("cho-pleiku", since, until, "kiểm tra", at=now) # doctest: +SKIP
    >>> listing.visitors[0].name, listing.visitors[0].id_number                  # doctest: +SKIP
    ('Nguyễn Văn***', '0640901*****')

Roles:

* ``tracer`` (the health service): traces, timelines, searches by name and visitor
  lists of every venue, in full; counts of every venue.
* ``venue`` (a venue owner): the visitor list of its own venue only, masked; its own
  counts and units; no trace, because a trace names people met at other venues.
* ``reporter`` (the information service's usage reports): counts only.
* ``admin`` (operators of units and venues): counts, units, the venue registry, the
  audit log, dead letters and held scans; no identity. A dead letter's payload can hold
  one (a refused scan's QR text): reading payloads takes a reason and is audited.

A request refused for its role reads nothing and leaves an audit entry ``refused``
(who, what, why; a person by pseudonym only); a request refused as malformed (no
reason, an empty period) reads nothing and leaves none.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from doorscan.errors import Refusal
from doorscan.timefmt import format_rfc3339, from_ms, to_ms
from doorscan.wire import VenueRecord
from hub import reports
from hub.access.entries import AuditTrail
from hub.access.policy import (
    ALL_VENUE_ROLES,
    Principal,
    Role,
    check_period,
    clean_reason,
    mask_id_number,
    mask_name,
)
from hub.access.views import (
    AccountView,
    AuditLogView,
    NameSearch,
    PersonMatch,
    Timeline,
    TimelineVisit,
    TokenView,
    TraceQuestion,
    Visitor,
    VisitorList,
)
from hub.audit import (
    Anchor,
    AnchorKeys,
    AnchorSigner,
    AuditVerification,
    check_anchors,
    make_anchor,
)
from hub.namefold import fold
from hub.store import AuditQuery, DeadLetter, HeldScan, HubStore, StoredUnitStatus
from hub.trace import (
    Finding,
    TraceExport,
    TracePage,
    TraceParams,
    TraceResult,
    find,
    named_batches,
    person_key_from_id,
    trace,
)

__all__ = ["AccessControlledStore", "AuditQuery", "LockedLogins"]


class LockedLogins(Protocol):
    """What the users list needs of the login throttle (`hub.login_throttle`)."""

    def locked_users(self, store: Any, now: datetime) -> set[str]: ...


class AccessControlledStore:
    """The reads a `Principal` may make, checked, masked and audited.

    It does not own `store`: whoever opened the store closes it.
    """

    def __init__(self, store: HubStore, principal: Principal) -> None:
        self._store = store
        self.principal = principal
        self._trail = AuditTrail(store, principal)

    @property
    def role(self) -> Role:
        return self.principal.role

    def _refuse(self, action: str, why: str, reason: str, at: datetime, **params: Any) -> Exception:
        return self._trail.refused(action, why, reason, at, **params)

    def _not_own(self, venue_id: str) -> str:
        return f"a venue owner sees its own venue only ({self.principal.venue_id}), not {venue_id}"

    def _admin_only(self, action: str, what: str, at: datetime) -> None:
        """Refuse (audited) any role but admin: the operators' reads."""
        if self.role is not Role.ADMIN:
            raise self._refuse(action, f"the {self.role} role may not {what}; admins may", "", at)

    # -- no identity ------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Totals (scans, people, venues, units, dead letters): every role may see them."""
        return self._store.counts()

    def venues(self) -> list[VenueRecord]:
        """The venue registry; a venue owner sees its own entry only."""
        venues = self._store.venues()
        if self.role is Role.VENUE:
            return [v for v in venues if v.venue_id == self.principal.venue_id]
        return venues

    def venue_names(self) -> dict[str, str]:
        """Venue id to name, for the venues this principal sees."""
        return {v.venue_id: v.name for v in self.venues()}

    def _scope(self, venue_id: str | None, what: str, at: datetime) -> str | None:
        """The one venue a count is limited to (None: all); refuse a venue owner's probe."""
        if self.role in ALL_VENUE_ROLES:
            return venue_id
        if self.role is Role.VENUE:
            if venue_id is not None and venue_id != self.principal.venue_id:
                raise self._refuse(what, self._not_own(venue_id), "", at, venue_id=venue_id)
            return self.principal.venue_id
        raise self._refuse(what, f"the {self.role} role may not read {what}", "", at)

    def usage(
        self,
        since: Any,
        until: Any,
        by: Literal["venue", "district"],
        at: datetime,
        *,
        venue_id: str | None = None,
    ) -> list[reports.UsageRow]:
        """Scans per Vietnam day (`hub.reports.usage_per_day`) in this principal's scope."""
        scope = self._scope(venue_id, "usage", at)
        return reports.usage_per_day(self._store, scope, since, until, by)

    def quiet_venues(self, days: int, at: datetime) -> list[reports.QuietVenue]:
        """Venues with no scan in the last `days` days, in this principal's scope."""
        return reports.quiet_venues(self._store, self._scope(None, "quiet venues", at), days, at)

    def units(
        self, at: datetime, silent_after: timedelta = reports.DEFAULT_SILENT
    ) -> list[reports.UnitHealth]:
        """Every unit's health (`hub.reports.units_overview`) in this principal's scope."""
        scope = self._scope(None, "units", at)
        return reports.units_overview(self._store, scope, at, silent_after=silent_after)

    def unit_statuses(self, units: Sequence[reports.UnitHealth]) -> list[StoredUnitStatus]:
        """The latest status of each of `units`, as `units` gave them (so in scope)."""
        visible = {u.unit_id for u in units}
        return [s for s in self._store.unit_statuses() if s.unit_id in visible]

    def software_wanted(self, units: Sequence[reports.UnitHealth]) -> dict[str, str]:
        """The release each of `units` was told to run (`hub fleet-update`), where one was."""
        wanted: dict[str, str] = {}
        for unit in units:
            issued = self._store.unit_config(unit.unit_id)
            software = None if issued is None else issued.settings.get("software")
            if isinstance(software, str):
                wanted[unit.unit_id] = software
        return wanted

    def units_online(self) -> int:
        """How many units say they are online (the metrics' gauge; a count, any role)."""
        return self._store.units_online()

    # -- identities -------------------------------------------------------------------------

    def visitors(
        self, venue_id: str, since: datetime, until: datetime, reason: str, at: datetime
    ) -> VisitorList:
        """Who checked in at `venue_id` with since <= time <= until, oldest first.

        Tracer: in full. Venue: its own venue only, names and numbers masked.
        Reporter and admin: `Forbidden`. The role is checked before the venue is looked
        up, so a venue owner cannot learn which other venue ids exist.
        """
        role = self.role
        if role not in (Role.TRACER, Role.VENUE):
            why = f"the {role} role sees counts only, not who visited a venue"
            raise self._refuse("visitors", why, reason, at, venue_id=venue_id)
        if role is Role.VENUE and venue_id != self.principal.venue_id:
            raise self._refuse("visitors", self._not_own(venue_id), reason, at, venue_id=venue_id)
        reason = clean_reason(reason, "a visitor list")
        check_period(since, until)
        if self._store.venue(venue_id) is None:
            raise Refusal("unknown_venue", f"unknown venue {venue_id!r}")
        masked = role is Role.VENUE
        params = {
            "venue_id": venue_id,
            "since": format_rfc3339(since),
            "until": format_rfc3339(until),
            "masked": masked,
        }

        def read() -> list[Visitor]:
            checkins = self._store.checkins_at(venue_id, to_ms(since), to_ms(until))
            return [
                Visitor(c.at_ms, c.kind, mask_id_number(c.id_number), mask_name(c.name))
                if masked
                else Visitor(c.at_ms, c.kind, c.id_number, c.name)
                for c in checkins
            ]

        visitors = self._trail.read("visitors", reason, params, at, read, size=len)
        return VisitorList(venue_id, since, until, visitors, masked)

    def trace(
        self,
        question: TraceQuestion,
        reason: str,
        at: datetime,
        *,
        action: str = "trace",
        page: TracePage | None = None,
    ) -> TraceResult:
        """Contacts of a person (`hub.trace`), for the tracer role only.

        A venue may not trace: a trace follows people to other venues. `action` names
        what the answer is for (``trace``, ``export_trace``), so an export is told apart.
        The whole trace reads one snapshot of the store (`CheckinReader.trace_reader`).
        With a `page`, only that page's contacts are named; the audit entry says which
        page, and its ``results`` how many people it named (every page is audited).
        """
        params, reason = self._trace_params(action, question, reason, at)
        audited = params.to_audit_dict(self._store.pseudonym(params.person_key))
        if page is not None:
            audited |= {"page": page.number, "page_size": page.size}

        def read() -> TraceResult:
            # One read snapshot for the whole trace, closed before the trail appends the
            # entry: the append is a write, which a read-only snapshot cannot make.
            with self._store.trace_reader() as reader:
                return trace(reader, params, page)

        return self._trail.read(action, reason, audited, at, read, size=_trace_size)

    def trace_export(self, question: TraceQuestion, reason: str, at: datetime) -> TraceExport:
        """A trace to be written out whole (CSV, XLSX), every contact named, streamed.

        The walk runs first, in one snapshot; the audit entry (``export_trace``, with how
        many people the file names) is written next; the contacts are then named in
        batches as the file is written (`hub.trace.named_batches`), so a large F2
        starts downloading at once and holds the store's read connection a batch at a
        time, never for a slow download's whole length.
        """
        action = "export_trace"
        params, reason = self._trace_params(action, question, reason, at)
        audited = params.to_audit_dict(self._store.pseudonym(params.person_key))

        def read() -> Finding:
            with self._store.trace_reader() as reader:
                return find(reader, params)

        finding = self._trail.read(action, reason, audited, at, read, size=lambda f: len(f.reached))
        return TraceExport(finding, named_batches(self._store.trace_reader, finding))

    def _trace_params(
        self, action: str, question: TraceQuestion, reason: str, at: datetime
    ) -> tuple[TraceParams, str]:
        """The trace asked for and its cleaned reason, if this account may trace at all."""
        id_text = question.id_text
        if self.role is not Role.TRACER:
            why = f"the {self.role} role may not trace; only the health service (role tracer) may"
            raise self._refuse(action, why, reason, at, subject=self._subject_or_none(id_text))
        reason = clean_reason(reason, "a trace")
        check_period(question.since, question.until)
        params = TraceParams(
            person_key=person_key_from_id(id_text),
            since=question.since,
            until=question.until,
            window=question.window,
            depth=question.depth,
            id_text=id_text.strip(),
        )
        return params, reason

    def timeline(
        self, id_text: str, since: datetime, until: datetime, reason: str, at: datetime
    ) -> Timeline:
        """The person's own check-ins with since <= time <= until, with venue names.

        Tracer only: a timeline follows one person across venues, like a trace. The
        audit entry names the person by pseudonym only.
        """
        if self.role is not Role.TRACER:
            why = f"the {self.role} role may not read a person's timeline"
            raise self._refuse("timeline", why, reason, at, subject=self._subject_or_none(id_text))
        reason = clean_reason(reason, "a timeline")
        person_key = person_key_from_id(id_text)
        check_period(since, until)
        params = {
            "subject": self._store.pseudonym(person_key),
            "since": format_rfc3339(since),
            "until": format_rfc3339(until),
        }

        def read() -> Timeline:
            names = {v.venue_id: v.name for v in self._store.venues()}
            known = self._store.person(person_key)
            visits = [
                TimelineVisit(c.venue_id, names.get(c.venue_id), from_ms(c.at_ms))
                for c in self._store.checkins_of(person_key, to_ms(since), to_ms(until))
            ]
            id_number = known[0] if known else person_key.split(":", 1)[-1]
            name = known[1] if known else None
            return Timeline(person_key, id_number, name, since, until, visits)

        return self._trail.read("timeline", reason, params, at, read, size=lambda t: len(t.visits))

    def find_people(self, name: str, reason: str, at: datetime) -> list[PersonMatch]:
        """Everyone scanned under `name`, diacritics and case ignored; tracer only.

        The audit entry names the searched name by its keyed pseudonym (the same keyed
        hash as ``scans.name_key``), never in the clear.
        """
        folded = fold(name)
        name_subject = self._store.pseudonym("name:" + folded) if folded else None
        if self.role is not Role.TRACER:
            why = f"the {self.role} role may not search people by name"
            raise self._refuse("find_people", why, reason, at, name_subject=name_subject)
        reason = clean_reason(reason, "a search by name")
        if not folded:
            raise Refusal("no_name", "give a name to search for")
        store = self._store
        if not isinstance(store, NameSearch):
            raise Refusal("no_name_index", "this store cannot search by name")

        def read() -> list[PersonMatch]:
            matches = []
            for person_key in store.person_keys_by_name(folded):
                known = self._store.person(person_key)
                if known is not None:
                    matches.append(PersonMatch(person_key, known[0], known[1]))
            return sorted(matches, key=lambda m: (m.name, m.id_number, m.person_key))

        params = {"name_subject": name_subject}
        return self._trail.read("find_people", reason, params, at, read, size=len)

    # -- the operators' reads -----------------------------------------------------------------

    def audit_log(self, limit: int, at: datetime, query: AuditQuery | None = None) -> AuditLogView:
        """The newest `limit` audit entries (optionally filtered) and the chain's check.

        Admin only. Entries name people by pseudonym only; their reasons are opened
        here (the store keeps them encrypted). Reading the log is itself audited.
        """
        self._admin_only("audit_log", "read the audit log", at)
        entries = self._trail.read(
            "audit_log",
            "",
            {"limit": limit, **_filter_params(query)},
            at,
            lambda: self._store.audit_entries(limit, query=query),
            size=len,
        )
        return AuditLogView(entries, self._store.verify_audit())

    def audit_anchor(self, signer: AnchorSigner, at: datetime) -> Anchor:
        """The chain's head, checked and signed (`hub.audit.make_anchor`); admin only.

        Not itself audited: it reads hashes, and an entry for it would move the head
        it just signed.
        """
        self._admin_only("audit_anchor", "anchor the audit log", at)
        check = self._store.verify_audit()
        last_id = check.entries or None  # ids run 1..entries in a chain found intact
        return make_anchor(check, last_id, format_rfc3339(at), signer)

    def verify_audit(
        self, at: datetime, anchors: Sequence[Anchor] = (), keys: AnchorKeys | None = None
    ) -> tuple[AuditVerification, str | None]:
        """The chain's check, and the first problem against `anchors` (None: all hold)."""
        self._admin_only("audit_verify", "check the audit log", at)
        check = self._store.verify_audit()
        if not anchors:
            return check, None
        if keys is None:
            raise Refusal("no_anchor_key", "checking anchors needs the audit key's public half")
        return check, check_anchors(anchors, keys, check.entries, self._store.audit_hash_at)

    def accounts(self, at: datetime, throttle: LockedLogins) -> list[AccountView]:
        """Every operator account with its tokens and whether logins are locked; admin only.

        No identity of the public is in it, so it is not audited; changes to accounts are
        (`hub.auth`).
        """
        self._admin_only("accounts", "list the hub's users", at)
        locked = throttle.locked_users(self._store, at)
        now_ms = to_ms(at)
        return [
            AccountView(
                user_id=u.user_id,
                display_name=u.display_name,
                role=u.role,
                venue_id=u.venue_id,
                active=u.active,
                locked=u.user_id.casefold() in locked,
                tokens=[
                    TokenView(
                        token_hash=k.token_hash,
                        kind=k.kind,
                        created_at=from_ms(k.created_at_ms),
                        expires_at=from_ms(k.expires_at_ms),
                        revoked=k.revoked,
                        live=not k.revoked and now_ms < k.expires_at_ms,
                    )
                    for k in self._store.tokens_of(u.user_id)
                ],
            )
            for u in self._store.users()
        ]

    def dead_letters(
        self, limit: int, at: datetime, *, payloads: bool = False, reason: str = ""
    ) -> list[DeadLetter]:
        """The newest refused messages; admin only. Payloads only with a reason.

        A payload can hold an identity (a refused scan's QR text), so without
        `payloads` each letter comes back with an empty payload and its size kept in
        `DeadLetter.size`; with it, a reason is required and the read is audited as
        ``dead_letter_payloads``.
        """
        action = "dead_letter_payloads" if payloads else "dead_letters"
        self._admin_only(action, "read dead letters", at)
        if payloads:
            reason = clean_reason(reason, "reading dead letters' payloads")
        letters = self._trail.read(
            action, reason, {"limit": limit}, at, lambda: self._store.dead_letters(limit), len
        )
        return letters if payloads else [d.without_payload() for d in letters]

    def held(self, limit: int, at: datetime) -> list[HeldScan]:
        """Scans held apart from traces (`hub.history`): where, when, why; never who."""
        self._admin_only("held", "list held scans", at)
        return self._store.held_scans(limit)

    def release_held(self, scan_ids: Sequence[str], reason: str, at: datetime) -> list[str]:
        """Move held scans into the scans (they enter traces); admin only, audited."""
        self._admin_only("release_held", "release held scans", at)
        reason = " ".join(reason.split())
        if not reason:
            raise Refusal("no_reason", "releasing puts scans into traces: give the reason")
        asked = sorted(set(scan_ids))
        # Recorded by hand, not with `AuditTrail.read`: the entry names what was released.
        try:
            released = self._store.release_held(asked)
        except Exception as exc:
            self._trail.record(
                "release_held", reason, {"asked": asked, "error": type(exc).__name__}, at
            )
            raise
        params = {"asked": asked, "released": released, "results": len(released)}
        self._trail.record("release_held", reason, params, at)
        return released

    def _subject_or_none(self, id_text: str) -> str | None:
        try:
            return self._store.pseudonym(person_key_from_id(id_text))
        except Refusal:
            return None  # not even a well-formed number: nothing to name


def _trace_size(result: TraceResult) -> int:
    return len(result.contacts)


def _filter_params(query: AuditQuery | None) -> dict[str, Any]:
    if query is None:
        return {}
    return {
        key: (format_rfc3339(value) if isinstance(value, datetime) else value)
        for key, value in (
            ("account", query.account),
            ("action", query.action),
            ("since", query.since),
            ("until", query.until),
        )
        if value is not None
    }
