"""Every string the dashboard shows, in Vietnamese (the default) and English.

The pages never hold words of their own: a template asks ``t("trace")`` and gets
"Truy vết" or "Trace". Both catalogs have the same keys (a test holds them to it), so
a page switched to English never shows a Vietnamese leftover or a bare key.

    >>> t("trace", "vi"), t("trace", "en")
    ('Truy vết', 'Trace')
    >>> format_time(datetime(2021, 8, 15, 2, 30, tzinfo=timezone.utc), "vi")
    '15/08/2021 09:30 (UTC+7)'

Catalog values are plain text, never HTML: templates escape them like any other value,
and a value with ``{name}`` fields is filled with `str.format` before it is escaped.

Times are shown in Vietnam's zone (UTC+7, no daylight saving) with the zone written
after them: tracers compare them with what people remember of their day, and a
time without its zone is a time someone will read as UTC.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Final, Literal

from doorscan.timefmt import VIETNAM

__all__ = [
    "CATALOGS",
    "DEFAULT_LANG",
    "LANGS",
    "VN_TZ",
    "Lang",
    "format_date",
    "format_time",
    "pick_lang",
    "t",
]

Lang = Literal["vi", "en"]
LANGS: Final[tuple[Lang, ...]] = ("vi", "en")
DEFAULT_LANG: Final[Lang] = "vi"
VN_TZ: Final = VIETNAM
"""Vietnam's only zone (Indochina Time); it has had no daylight saving since 1975."""

_VI: Final[dict[str, str]] = {
    "app_name": "doorscan — Trung tâm",
    "lang_name": "Tiếng Việt",
    "other_lang": "English",
    "login": "Đăng nhập",
    "logout": "Đăng xuất",
    "user_id": "Tên đăng nhập",
    "password": "Mật khẩu",
    "login_failed": "Tên đăng nhập hoặc mật khẩu không đúng.",
    "login_locked": "Đăng nhập sai quá nhiều lần. Vui lòng thử lại sau {minutes} phút.",
    "signed_in_as": "Đang đăng nhập: {name} ({role})",
    "trace": "Truy vết",
    "units": "Thiết bị",
    "reports": "Báo cáo",
    "forbidden_title": "Không được phép",
    "forbidden_text": "Vai trò của bạn ({role}) không được xem trang này.",
    "forbidden_origin": "Yêu cầu đến từ một trang khác; đã từ chối.",
    "unavailable_title": "Tạm thời không dùng được",
    "unavailable_text": "Trung tâm đang không kết nối được cơ sở dữ liệu (máy chủ đang khởi động "
    "lại hoặc chuyển sang máy dự phòng). Vui lòng thử lại sau ít giây.",
    "back_home": "Về trang chính",
    "role_tracer": "truy vết",
    "role_venue": "địa điểm",
    "role_reporter": "báo cáo",
    "role_admin": "quản trị",
    "id_or_name": "Số CCCD/CMND hoặc họ tên",
    "id_hint": "Gõ số, quét thẻ CCCD bằng máy quét, hoặc gõ họ tên (không cần dấu).",
    "since": "Từ ngày",
    "until": "Đến ngày",
    "window_minutes": "Khoảng thời gian (phút)",
    "depth": "Số cấp (F1, F2…)",
    "reason": "Lý do",
    "reason_hint": "Ví dụ: mã ca bệnh. Mỗi lần truy vết được ghi vào nhật ký.",
    "run_trace": "Truy vết",
    "pick_person": "Có nhiều người trùng tên; chọn một người:",
    "no_match": "Không tìm thấy ai có tên này.",
    "choose": "Chọn",
    "index_person": "Người nguồn (F0)",
    "unknown_person": "(chưa từng quét tại cửa)",
    "visits": "Các lần đến",
    "degree": "F{n}",
    "no_contacts": "Không có người tiếp xúc trong khoảng thời gian này.",
    "n_contacts": "{n} người",
    "most_at": "Nhiều nhất tại",
    "busiest_hours": "Giờ đông nhất",
    "page_of": "Trang {n}/{total}",
    "page_previous": "Trang trước",
    "page_next": "Trang sau",
    "name": "Họ tên",
    "id_number": "Số giấy tờ",
    "venue": "Địa điểm",
    "time": "Thời gian",
    "through": "Tiếp xúc qua",
    "timeline": "Dòng thời gian của người nguồn",
    "timeline_visit": "Lần đến",
    "timeline_contact": "Người tiếp xúc F1",
    "export": "Xuất",
    "export_csv": "Tải CSV",
    "export_xlsx": "Tải XLSX",
    "bad_input": "Dữ liệu không hợp lệ: {detail}",
    "unit": "Thiết bị",
    "status": "Trạng thái",
    "online": "Trực tuyến",
    "offline": "Mất kết nối",
    "last_seen": "Lần báo gần nhất",
    "last_scan": "Lần quét gần nhất",
    "backlog": "Tồn đọng",
    "clock_trusted": "Đồng hồ tin cậy",
    "version": "Phiên bản",
    "camera_ok": "Camera",
    "cpu_temp": "Nhiệt độ CPU",
    "disk_free": "Dung lượng trống",
    "decode_rate": "Khung hình/giây",
    "config_version": "Cấu hình",
    "config_refused": "Cấu hình bị từ chối",
    "update_downloading": "đang tải bản cập nhật",
    "update_staged": "đã cài, chờ lúc vắng để chuyển",
    "update_switched": "đã chuyển, đang tự kiểm tra",
    "update_confirmed": "đã cập nhật",
    "update_rolled_back": "đã quay về bản cũ",
    "update_failed": "cập nhật thất bại",
    "quarantined": "Bị từ chối, giữ trên thiết bị",
    "silent": "Im lặng quá lâu",
    "unregistered": "Chưa đăng ký",
    "silent_note": "Các thiết bị được đánh dấu đã im lặng quá lâu: cần kiểm tra.",
    "yes": "Có",
    "no": "Không",
    "unknown": "—",
    "no_units": "Chưa có thiết bị nào.",
    "scans_per_day": "Lượt quét mỗi ngày",
    "by_venue": "Theo địa điểm",
    "by_district": "Theo quận/huyện",
    "district": "Quận/huyện",
    "day": "Ngày",
    "scans": "Lượt quét",
    "quiet_venues": "Địa điểm không có lượt quét trong {days} ngày",
    "quiet_days": "Số ngày",
    "no_quiet": "Không có địa điểm nào im lặng.",
    "units_offline": "Thiết bị mất kết nối",
    "no_offline": "Mọi thiết bị đều trực tuyến.",
    "show": "Xem",
    "no_data": "Không có dữ liệu trong khoảng thời gian này.",
    "chart_total": "Tổng lượt quét mỗi ngày",
    "times_in_zone": "Giờ Việt Nam (UTC+7).",
    "users": "Người dùng",
    "audit": "Nhật ký truy cập",
    "visitors": "Khách đã vào",
    "add_user": "Thêm người dùng",
    "display_name": "Tên hiển thị",
    "role": "Vai trò",
    "venue_of_role": "Địa điểm (vai trò địa điểm)",
    "password_hint": "Mật khẩu ít nhất {n} ký tự; người dùng đổi được sau.",
    "tokens": "Mã truy cập",
    "actions": "Thao tác",
    "active": "Đang dùng",
    "disabled": "Đã khoá",
    "locked": "Tạm khoá do đăng nhập sai",
    "token_session": "Phiên",
    "token_api": "API",
    "expires": "hết hạn",
    "revoked": "đã thu hồi",
    "expired": "đã hết hạn",
    "revoke": "Thu hồi",
    "disable": "Khoá",
    "enable": "Mở khoá tài khoản",
    "unlock": "Cho đăng nhập lại",
    "change_role": "Đổi vai trò",
    "new_password": "Mật khẩu mới",
    "reset_password": "Đặt lại mật khẩu",
    "done_add": "Đã thêm người dùng {user}.",
    "done_active": "Đã đổi trạng thái của {user}.",
    "done_password": "Đã đặt lại mật khẩu của {user}.",
    "done_role": "Đã đổi vai trò của {user}.",
    "done_unlock": "{user} đăng nhập lại được.",
    "done_revoke-token": "Đã thu hồi mã truy cập của {user}.",
    "account": "Tài khoản",
    "action": "Hành động",
    "date_format": "dd/mm/yyyy",
    "chain_ok": "Nhật ký nguyên vẹn: {n} mục đã kiểm tra.",
    "chain_broken": "Nhật ký bị sửa: {problem}",
    "channel": "Kênh",
    "address": "Địa chỉ IP",
    "details": "Chi tiết",
    "reason_hint_visitors": (
        "Ví dụ: mã ca bệnh hoặc yêu cầu kiểm tra. Mỗi lần xem được ghi vào nhật ký."
    ),
    "n_visits": "{n} lượt vào",
    "masked_note": "Họ tên và số giấy tờ được che theo Quyết định 2666/QĐ-BYT.",
    "kind": "Loại mã",
    "kind_cccd": "CCCD",
    "kind_health": "Mã QR y tế",
    "kind_card": "Thẻ khách",
    "held": "Quét bị giữ lại",
    "held_note": (
        "Lượt quét một thiết bị không thể có (trước khi đăng ký, trước lần báo đã gửi "
        "hết, nhanh hơn một cửa) được giữ riêng: không vào truy vết, danh sách hay báo "
        "cáo. Chọn những lượt đã kiểm tra là thật để đưa vào, kèm lý do."
    ),
    "held_scans": "Lượt quét bị giữ",
    "received": "Nhận lúc",
    "scanned": "Quét lúc",
    "code": "Mã",
    "why": "Lý do",
    "release": "Đưa vào dữ liệu",
    "no_held": "Không có lượt quét nào bị giữ.",
    "done_release": "Đã đưa {n} lượt quét vào dữ liệu.",
    "dead_letters": "Tin nhắn bị từ chối",
    "dead_letters_note": (
        "Nội dung tin nhắn có thể chứa danh tính nên không hiển thị ở đây (dùng lệnh "
        "doorscan-hub dead-letters --payloads kèm lý do)."
    ),
    "source": "Nguồn",
    "topic": "Chủ đề",
    "size": "Kích thước (byte)",
    "no_dead_letters": "Không có tin nhắn nào bị từ chối.",
}

_EN: Final[dict[str, str]] = {
    "app_name": "doorscan — Hub",
    "lang_name": "English",
    "other_lang": "Tiếng Việt",
    "login": "Log in",
    "logout": "Log out",
    "user_id": "User id",
    "password": "Password",
    "login_failed": "Wrong user id or password.",
    "login_locked": "Too many failed logins. Try again in {minutes} min.",
    "signed_in_as": "Signed in: {name} ({role})",
    "trace": "Trace",
    "units": "Units",
    "reports": "Reports",
    "forbidden_title": "Not allowed",
    "forbidden_text": "Your role ({role}) may not see this page.",
    "forbidden_origin": "The request came from another site; refused.",
    "unavailable_title": "Unavailable for a moment",
    "unavailable_text": "The hub cannot reach its database (the server is restarting or "
    "failing over to its standby). Try again in a few seconds.",
    "back_home": "Back to your home page",
    "role_tracer": "tracer",
    "role_venue": "venue",
    "role_reporter": "reporter",
    "role_admin": "admin",
    "id_or_name": "CCCD/CMND number or name",
    "id_hint": "Type the number, scan the CCCD card with the scanner, or type a name "
    "(diacritics optional).",
    "since": "From",
    "until": "To",
    "window_minutes": "Window (minutes)",
    "depth": "Degrees (F1, F2…)",
    "reason": "Reason",
    "reason_hint": "For example the case number. Every trace is written to the audit log.",
    "run_trace": "Trace",
    "pick_person": "Several people have this name; pick one:",
    "no_match": "Nobody with this name was found.",
    "choose": "Pick",
    "index_person": "Index person (F0)",
    "unknown_person": "(never scanned at a door)",
    "visits": "Visits",
    "degree": "F{n}",
    "no_contacts": "No contacts in this period.",
    "n_contacts": "{n} people",
    "most_at": "Most at",
    "busiest_hours": "Busiest hours",
    "page_of": "Page {n} of {total}",
    "page_previous": "Previous page",
    "page_next": "Next page",
    "name": "Name",
    "id_number": "ID number",
    "venue": "Venue",
    "time": "Time",
    "through": "Met through",
    "timeline": "Timeline of the index person",
    "timeline_visit": "Visit",
    "timeline_contact": "F1 contact",
    "export": "Export",
    "export_csv": "Download CSV",
    "export_xlsx": "Download XLSX",
    "bad_input": "Invalid input: {detail}",
    "unit": "Unit",
    "status": "Status",
    "online": "Online",
    "offline": "Offline",
    "last_seen": "Last status",
    "last_scan": "Last scan",
    "backlog": "Backlog",
    "clock_trusted": "Clock trusted",
    "version": "Version",
    "camera_ok": "Camera",
    "cpu_temp": "CPU temperature",
    "disk_free": "Disk free",
    "decode_rate": "Frames/s",
    "config_version": "Config",
    "config_refused": "Config refused",
    "update_downloading": "downloading the update",
    "update_staged": "installed, switching at a quiet moment",
    "update_switched": "switched, checking itself",
    "update_confirmed": "updated",
    "update_rolled_back": "rolled back",
    "update_failed": "update failed",
    "quarantined": "Refused, kept on the unit",
    "silent": "Silent too long",
    "unregistered": "Not registered",
    "silent_note": "Marked units have been silent too long: check them.",
    "yes": "Yes",
    "no": "No",
    "unknown": "—",
    "no_units": "No units yet.",
    "scans_per_day": "Scans per day",
    "by_venue": "By venue",
    "by_district": "By district",
    "district": "District",
    "day": "Day",
    "scans": "Scans",
    "quiet_venues": "Venues with no scans for {days} days",
    "quiet_days": "Days",
    "no_quiet": "No quiet venues.",
    "units_offline": "Units offline",
    "no_offline": "Every unit is online.",
    "show": "Show",
    "no_data": "No data in this period.",
    "chart_total": "Total scans per day",
    "times_in_zone": "Vietnam time (UTC+7).",
    "users": "Users",
    "audit": "Audit log",
    "visitors": "Visitors",
    "add_user": "Add a user",
    "display_name": "Display name",
    "role": "Role",
    "venue_of_role": "Venue (venue role)",
    "password_hint": "A password of at least {n} characters; the user can change it later.",
    "tokens": "Tokens",
    "actions": "Actions",
    "active": "Active",
    "disabled": "Disabled",
    "locked": "Locked after failed logins",
    "token_session": "Session",
    "token_api": "API",
    "expires": "expires",
    "revoked": "revoked",
    "expired": "expired",
    "revoke": "Revoke",
    "disable": "Disable",
    "enable": "Enable",
    "unlock": "Unlock",
    "change_role": "Change role",
    "new_password": "New password",
    "reset_password": "Reset password",
    "done_add": "User {user} added.",
    "done_active": "{user}'s state changed.",
    "done_password": "{user}'s password reset.",
    "done_role": "{user}'s role changed.",
    "done_unlock": "{user} can log in again.",
    "done_revoke-token": "A token of {user} revoked.",
    "account": "Account",
    "action": "Action",
    "date_format": "dd/mm/yyyy",
    "chain_ok": "The log is intact: {n} entries checked.",
    "chain_broken": "The log was altered: {problem}",
    "channel": "Channel",
    "address": "IP address",
    "details": "Details",
    "reason_hint_visitors": (
        "For example the case code or the inspection. Every look is written to the audit log."
    ),
    "n_visits": "{n} check-ins",
    "masked_note": "Names and ID numbers masked as decision 2666/QĐ-BYT requires.",
    "kind": "Code",
    "kind_cccd": "CCCD",
    "kind_health": "Health QR",
    "kind_card": "Visitor card",
    "held": "Held scans",
    "held_note": (
        "Scans a unit cannot have made (before its registration, before it last said it "
        "had sent everything, faster than a door) are held apart: no trace, list or "
        "report reads them. Release those checked genuine, with the reason."
    ),
    "held_scans": "Held scans",
    "received": "Received",
    "scanned": "Scanned",
    "code": "Code",
    "why": "Why",
    "release": "Release into the scans",
    "no_held": "No scan is held.",
    "done_release": "{n} scans released into the scans.",
    "dead_letters": "Refused messages",
    "dead_letters_note": (
        "A payload can hold an identity, so none is shown here (use doorscan-hub "
        "dead-letters --payloads with a reason)."
    ),
    "source": "Source",
    "topic": "Topic",
    "size": "Size (bytes)",
    "no_dead_letters": "No message was refused.",
}

CATALOGS: Final[dict[Lang, dict[str, str]]] = {"vi": _VI, "en": _EN}


def t(key: str, lang: Lang = DEFAULT_LANG, **fields: object) -> str:
    """The text of `key` in `lang`, with ``{field}`` places filled from `fields`.

    A missing key is a programming error, raised at once (`KeyError`) rather than
    shown to an operator as a bare id.
    """
    text = CATALOGS[lang][key]
    return text.format(**fields) if fields else text


def pick_lang(query: str | None, cookie: str | None) -> Lang:
    """The page's language: ``?lang=`` first, then the ``lang`` cookie, else Vietnamese.

    Anything but a known code is ignored, so a crafted value never reaches a page.
    """
    for value in (query, cookie):
        if value == "vi":
            return "vi"
        if value == "en":
            return "en"
    return DEFAULT_LANG


def format_time(value: datetime, lang: Lang) -> str:
    """`value` in Vietnam time, minute precision, with the zone written after it.

    Vietnamese pages write dates day first (15/08/2021), English pages ISO order, so
    neither reader has to guess which number is the month.
    """
    local = value.astimezone(VN_TZ)
    shown = f"{local:%d/%m/%Y %H:%M}" if lang == "vi" else f"{local:%Y-%m-%d %H:%M}"
    return f"{shown} (UTC+7)"


def format_date(value: date, lang: Lang) -> str:
    """A calendar day (already a Vietnam day, as reports count them)."""
    return f"{value:%d/%m/%Y}" if lang == "vi" else value.isoformat()


def _check_catalogs() -> None:
    # Cheap enough to run at import: a catalog that drifted fails the first request loudly.
    if set(_VI) != set(_EN):
        raise RuntimeError(f"i18n catalogs differ: {sorted(set(_VI) ^ set(_EN))}")


_check_catalogs()
