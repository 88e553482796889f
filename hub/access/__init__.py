"""Accountable access: every read of the hub goes through here, checked and audited.

* `hub.access.policy`: who asks (`Principal`: role, account, channel, address), the
  roles, the masks of MoH decision 2666/QĐ-BYT, the checks every request gets;
* `hub.access.reader`: `AccessControlledStore`, the one reader of the CLI, the API and
  the dashboard (identities, counts, units, the audit log, dead letters, held scans);
* `hub.access.entries`: the audit entries it writes, naming the account;
* `hub.access.views`: what it hands back.

The web and CLI layers import no store module but `hub.store.factory` (checked by
tests/test_layers.py): whatever they show, they got from here.
"""

from hub.access.entries import AuditTrail, record_event
from hub.access.policy import (
    Channel,
    Forbidden,
    Principal,
    PrincipalError,
    Role,
    check_period,
    clean_reason,
    mask_id_number,
    mask_name,
)
from hub.access.reader import AccessControlledStore, AuditQuery
from hub.access.views import (
    AccountView,
    AuditLogView,
    DeadLetter,
    HeldScan,
    NameSearch,
    PersonMatch,
    Timeline,
    TimelineVisit,
    TokenView,
    TraceQuestion,
    UnitStatusRow,
    Visitor,
    VisitorList,
)

__all__ = [
    "AccessControlledStore",
    "AccountView",
    "AuditQuery",
    "AuditLogView",
    "AuditTrail",
    "Channel",
    "DeadLetter",
    "Forbidden",
    "HeldScan",
    "NameSearch",
    "PersonMatch",
    "Principal",
    "PrincipalError",
    "Role",
    "Timeline",
    "TimelineVisit",
    "TraceQuestion",
    "TokenView",
    "UnitStatusRow",
    "Visitor",
    "VisitorList",
    "check_period",
    "clean_reason",
    "mask_id_number",
    "mask_name",
    "record_event",
]
