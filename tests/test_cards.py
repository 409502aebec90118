"""The card registry: classification, validity in site local time, bad rows, reloads, hashing."""

import hashlib
import hmac
import os
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, strategies as st

from gateway.cards import CardRegistry, card_hash, load_hash_key

TZ = "Asia/Shanghai"
SH = ZoneInfo(TZ)
HEADER = "number,holder,household,role,valid_from,valid_to,revoked\n"
NOW = datetime(2024, 6, 15, 12, 0, tzinfo=SH)


def write(path: Path, rows: str, encoding: str = "utf-8") -> Path:
    path.write_text(HEADER + rows, encoding=encoding)
    return path


def registry(tmp_path: Path, rows: str, encoding: str = "utf-8", **kw) -> CardRegistry:
    return CardRegistry(write(tmp_path / "cards.csv", rows, encoding), TZ, **kw)


ROWS = (
    "0012345678,张伟,3栋2单元501,resident,,,\n"           # line 2
    "0000000002,李娜,,staff:guard,,,\n"                    # line 3
    "0000000003,王芳,,Staff:Cleaner,,,no\n"                # line 4
    "0000000004,访客 赵,5栋101,visitor,2024-06-15,2024-06-15,\n"
    "0000000005,刘洋,7栋302,resident,,,是\n"
    "0000000006,陈静,7栋303,resident,2023-01-01,2024-06-14,\n"
    "0000000007,杨光,8栋101,resident,2024-06-16,,\n"
)


def test_every_category(tmp_path):
    reg = registry(tmp_path, ROWS)
    assert reg.problems == []
    c = reg.classify(12345678, 32, NOW)
    assert (c.category, c.holder, c.household, c.role, c.number) == ("resident", "张伟", "3栋2单元501", "", "0012345678")
    c = reg.classify(2, 32, NOW)
    assert (c.category, c.role, c.holder) == ("staff", "guard", "李娜")
    assert reg.classify(3, 32, NOW).role == "cleaner"
    assert reg.classify(4, 32, NOW).category == "visitor"
    assert reg.classify(5, 32, NOW).category == "revoked"
    assert reg.classify(6, 32, NOW).category == "expired"
    assert reg.classify(7, 32, NOW).category == "expired"  # not yet valid
    c = reg.classify(99, 32, NOW)
    assert (c.category, c.number, c.holder) == ("unknown", "0000000099", "")
    assert [g.holder for g in reg.guards()] == ["李娜"]
    assert len(reg) == 7


def test_revoked_wins_over_expired(tmp_path):
    reg = registry(tmp_path, "1,a,,resident,2020-01-01,2020-12-31,yes\n")
    assert reg.classify(1, 32, NOW).category == "revoked"


def test_date_only_valid_to_covers_the_whole_local_day(tmp_path):
    reg = registry(tmp_path, "1,a,,visitor,2024-06-01,2024-06-30,\n")
    # Shanghai is UTC+8: the local day 2024-06-30 is 2024-06-29T16:00Z .. 2024-06-30T16:00Z.
    at = lambda s: datetime.fromisoformat(s).replace(tzinfo=timezone.utc)  # noqa: E731
    assert reg.classify(1, 32, at("2024-05-31T15:59:59.999999")).category == "expired"
    assert reg.classify(1, 32, at("2024-05-31T16:00:00")).category == "visitor"  # 06-01 00:00 local
    assert reg.classify(1, 32, at("2024-06-30T15:59:59.999999")).category == "visitor"  # 23:59:59 local
    assert reg.classify(1, 32, at("2024-06-30T16:00:00")).category == "expired"  # 07-01 00:00 local
    assert reg.classify(1, 32, datetime(2024, 6, 30, 23, 59, 59, tzinfo=SH)).category == "visitor"
    assert reg.classify(1, 32, datetime(2024, 7, 1, 0, 0, tzinfo=SH)).category == "expired"


def test_valid_to_with_a_time_includes_that_instant(tmp_path):
    reg = registry(tmp_path, "1,a,,visitor,2024-06-15 08:30,2024-06-15 18:00,\n"
                             "2,b,,visitor,,2024-06-15T18:00:00+00:00,\n"
                             "3,c,,visitor,2024/6/1,2024/6/15,\n")
    assert reg.problems == []
    assert reg.classify(1, 32, datetime(2024, 6, 15, 8, 29, 59, tzinfo=SH)).category == "expired"
    assert reg.classify(1, 32, datetime(2024, 6, 15, 8, 30, tzinfo=SH)).category == "visitor"
    assert reg.classify(1, 32, datetime(2024, 6, 15, 10, 0, tzinfo=timezone.utc)).category == "visitor"  # 18:00
    assert reg.classify(1, 32, datetime(2024, 6, 15, 10, 0, 0, 1, tzinfo=timezone.utc)).category == "expired"
    # An explicit offset is taken as written, not as site time.
    assert reg.classify(2, 32, datetime(2024, 6, 16, 2, 0, tzinfo=SH)).category == "visitor"  # 18:00Z
    assert reg.classify(2, 32, datetime(2024, 6, 16, 2, 0, 1, tzinfo=SH)).category == "expired"
    assert reg.classify(3, 32, datetime(2024, 6, 15, 23, 0, tzinfo=SH)).category == "visitor"  # Excel dates


@given(st.dates(date(2001, 1, 1), date(2098, 12, 31)),
       st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31), timezones=st.just(timezone.utc)))
def test_date_validity_is_by_the_site_local_date(tmp_path_factory, valid_to, at):
    tmp = tmp_path_factory.mktemp("v")
    reg = registry(tmp, f"1,a,,resident,{valid_to - timedelta(days=3)},{valid_to},\n")
    local_day = at.astimezone(SH).date()
    valid = valid_to - timedelta(days=3) <= local_day <= valid_to
    assert reg.classify(1, 32, at).category == ("resident" if valid else "expired")


def test_classify_needs_an_aware_time(tmp_path):
    with pytest.raises(ValueError):
        registry(tmp_path, ROWS).classify(1, 32, datetime(2024, 1, 1))


def test_26_bit_reader_matches_a_32_bit_card(tmp_path):
    em = 0x05BC614E  # printed on the card as 0096231758
    reg = registry(tmp_path, f"{em:010d},a,,resident,,,\n")
    c = reg.classify(em & 0xFFFFFF, 24, NOW)
    assert (c.category, c.number) == ("resident", "0096231758")
    assert reg.classify(em, 32, NOW).category == "resident"
    assert reg.classify(em ^ 0x01000000, 32, NOW).category == "unknown"  # a 32-bit reader sees the difference
    assert reg.classify((em & 0xFFFFFF) ^ 1, 24, NOW).category == "unknown"


def test_card_registered_as_wiegand26_matches_a_32_bit_read(tmp_path):
    reg = registry(tmp_path, '"188,24910",a,,resident,,,\n')  # facility 188 card 24910 = 0xBC614E
    c = reg.classify(0x05BC614E, 32, NOW)
    assert (c.category, c.number) == ("resident", "0012345678")
    assert reg.classify(0xBC614E, 24, NOW).category == "resident"


def test_low_24_bit_collisions(tmp_path):
    reg = registry(tmp_path, f"{0x01BC614E:010d},first,,resident,,,\n"
                             f"{0x02BC614E:010d},second,,staff,,,\n"
                             f"{0x00BC614E:010d},exact,,visitor,,,\n")
    assert reg.problems == []  # not wrong, worth knowing
    assert len(reg.notes) == 2 and all("cannot tell them apart" in n for n in reg.notes)
    c = reg.classify(0xBC614E, 24, NOW)
    assert c.holder == "exact" and c.note == ""  # an exact match wins
    reg2 = registry(tmp_path, f"{0x01BC614E:010d},first,,resident,,,\n{0x02BC614E:010d},second,,staff,,,\n")
    c = reg2.classify(0xBC614E, 24, NOW)
    assert c.holder == "first" and "matches 2 registered cards" in c.note
    assert reg2.classify(0x02BC614E, 32, NOW).holder == "second"


def test_number_forms(tmp_path):
    reg = registry(tmp_path, '00BC614F,a,,resident,,,\n0x00BC6150,b,,resident,,,\n"1:2",c,,resident,,,\n'
                             "  12345 ,d,,resident,,,\n")
    assert reg.problems == []
    assert [reg.classify(v, 32, NOW).holder for v in (0xBC614F, 0xBC6150, 12345)] == ["a", "b", "d"]
    assert reg.classify((1 << 16) | 2, 24, NOW).holder == "c"


def test_bad_rows_are_reported_with_line_numbers_and_skipped(tmp_path):
    rows = ("0000000001,ok,,resident,,,\n"                   # 2
            "xyz,bad number,,resident,,,\n"                  # 3
            "0000000003,bad role,,tenant,,,\n"               # 4
            "0000000004,bad date,,resident,2024-13-01,,\n"   # 5
            "0000000005,bad revoked,,resident,,,maybe\n"     # 6
            '"0000000006","multi\nline",,resident,,,\n'       # 7-8
            "0000000007,Zhang, San,,resident,,,\n"           # 9
            "\n"                                             # 10
            "# a comment,,,,,,\n"                            # 11
            "0000000012,job for a resident,,resident:owner,,,\n"  # 12
            "0000000013,ok too,,visitor,2024-06-20,2024-06-10,\n"  # 13
            "0000000014,empty role,,,,,\n")                  # 14
    reg = registry(tmp_path, rows)
    problems = "\n".join(reg.problems)
    assert "cards.csv line 3: number 'xyz': " in problems
    assert "cards.csv line 4: role 'tenant': " in problems
    assert "cards.csv line 5: valid_from '2024-13-01': " in problems
    assert "cards.csv line 6: revoked 'maybe': " in problems
    assert "cards.csv line 9: 8 values for 7 columns" in problems
    assert "cards.csv line 12: role 'resident:owner'" in problems
    assert "cards.csv line 13: valid_from is not before valid_to" in problems
    assert "cards.csv line 14: role '': " in problems
    assert len(reg.problems) == 8
    assert sorted(e.holder for e in reg.entries) == ["multi\nline", "ok", "ok too"]
    assert reg.classify(13, 32, NOW).category == "expired"


def test_duplicate_number_later_row_wins(tmp_path):
    reg = registry(tmp_path, "0012345678,old,,resident,,,\n00BC614E,new,,staff:guard,,,\n")
    assert reg.classify(12345678, 32, NOW).holder == "new"
    # never the number in clear (it is logged): its last 4 digits find the row
    assert reg.problems == ["cards.csv line 3: number ******5678 is also at cards.csv line 2; using this later one"]
    assert len(reg) == 1


def test_bom_and_chinese_text(tmp_path):
    reg = registry(tmp_path, "0012345678,欧阳娜娜,12栋3单元1802,resident,,,否\n", encoding="utf-8-sig")
    assert (tmp_path / "cards.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert reg.problems == []
    c = reg.classify(12345678, 32, NOW)
    assert (c.category, c.holder, c.household) == ("resident", "欧阳娜娜", "12栋3单元1802")


def test_header_in_another_order_and_case(tmp_path):
    p = tmp_path / "cards.csv"
    p.write_text("Role, Number ,holder,notes\nstaff:guard,0000000009,周军,夜班\n", encoding="utf-8")
    reg = CardRegistry(p, TZ)
    assert reg.classify(9, 32, NOW).role == "guard"
    assert reg.problems == ["cards.csv line 1: unknown columns ignored: notes"]


@pytest.mark.parametrize("text, revoked", [
    ("", False), ("0", False), ("false", False), ("no", False), ("FALSE", False), ("No", False), ("否", False),
    ("1", True), ("true", True), ("yes", True), ("YES", True), ("True", True), ("是", True),
])
def test_revoked_variants(tmp_path, text, revoked):
    reg = registry(tmp_path, f"1,a,,resident,,,{text}\n")
    assert reg.problems == []
    assert reg.classify(1, 32, NOW).category == ("revoked" if revoked else "resident")


def test_file_without_header_or_unreadable_is_reported_not_raised(tmp_path):
    p = tmp_path / "cards.csv"
    p.write_text("0012345678,张伟,,resident,,,\n", encoding="utf-8")
    reg = CardRegistry(p, TZ)
    assert len(reg) == 0 and "line 1: the first line must name the columns" in reg.problems[0]
    p.write_bytes(HEADER.encode() + "1,张伟,,resident,,,\n".encode("gbk"))
    reg = CardRegistry(p, TZ)
    assert len(reg) == 0 and "not UTF-8" in reg.problems[0]
    reg = CardRegistry(tmp_path / "missing.csv", TZ)
    assert len(reg) == 0 and "missing.csv: cannot read" in reg.problems[0]


def bump(path: Path) -> None:
    """A new mtime even on file systems with coarse timestamps."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def test_reload_after_edit(tmp_path):
    reg = registry(tmp_path, "0000000001,a,,resident,,,\n")
    p = tmp_path / "cards.csv"
    assert reg.reload_if_changed() is False  # unchanged
    write(p, "0000000001,a,,resident,,,1\n")  # same size: only the mtime tells
    bump(p)
    assert reg.reload_if_changed() is True
    assert reg.classify(1, 32, NOW).category == "revoked"
    assert reg.reload_if_changed() is False
    # A file that cannot be read keeps the old data, and says why.
    p.write_bytes(b"\xff\xfe garbage")
    bump(p)
    assert reg.reload_if_changed() is False
    assert reg.classify(1, 32, NOW).category == "revoked"
    assert "not UTF-8" in reg.load_error and "still using the 1 cards loaded before" in reg.load_error
    assert reg.problems == [reg.load_error]
    assert reg.reload_if_changed() is False  # not tried again until it changes
    p.unlink()
    assert reg.reload_if_changed() is False and "cannot read" in reg.problems[0]
    assert reg.classify(1, 32, NOW).category == "revoked"
    write(p, "0000000001,a,,resident,,,\n0000000002,b,,staff:guard,,,\n")
    assert reg.reload_if_changed() is True
    assert reg.problems == [] and reg.load_error is None
    assert len(reg) == 2 and reg.classify(1, 32, NOW).category == "resident"


def test_extra_entries_from_the_site_file(tmp_path):
    extra = [{"number": "0012345678", "holder": "物业值班", "role": "staff:guard", "valid_to": date(2024, 6, 15),
              "revoked": False},
             {"number": "123,45678", "holder": "x", "role": "visitor"},
             {"number": "nope", "role": "resident"}]
    reg = registry(tmp_path, "0012345678,csv row,,resident,,,\n", extra=extra)
    c = reg.classify(12345678, 32, datetime(2024, 6, 15, 23, 59, tzinfo=SH))
    assert (c.category, c.holder, c.role) == ("staff", "物业值班", "guard")  # the later entry wins
    assert reg.classify(12345678, 32, datetime(2024, 6, 16, tzinfo=SH)).category == "expired"
    assert reg.classify((123 << 16) | 45678, 24, NOW).category == "visitor"
    assert any(p.startswith("site file cards[2]: number 'nope'") for p in reg.problems)
    assert any(p.startswith("site file cards[0]: number ******5678 is also at cards.csv line 2") for p in reg.problems)
    only = CardRegistry(None, TZ, extra=extra[:1])
    assert only.classify(12345678, 32, NOW).holder == "物业值班" and only.reload_if_changed() is False


def test_unknown_time_zone():
    with pytest.raises(ValueError):
        CardRegistry(None, "Mars/Olympus")


def test_card_hash_is_stable_and_keyed():
    h = card_hash("0012345678", b"site-key")
    assert h == hmac.new(b"site-key", b"0012345678", hashlib.sha256).hexdigest()[:16]
    assert h == "ddf0a0c85aafa1a8"  # (openssl dgst -sha256 -hmac) stays the same: head office joins on it
    assert len(h) == 16 and int(h, 16) >= 0
    assert card_hash("0012345678", b"other-key") != h
    assert card_hash("0012345679", b"site-key") != h


def test_load_hash_key(monkeypatch):
    monkeypatch.delenv("CARD_HASH_KEY_TEST", raising=False)
    assert load_hash_key("CARD_HASH_KEY_TEST") is None
    monkeypatch.setenv("CARD_HASH_KEY_TEST", "")
    assert load_hash_key("CARD_HASH_KEY_TEST") is None
    monkeypatch.setenv("CARD_HASH_KEY_TEST", "s3cret密钥")
    assert load_hash_key("CARD_HASH_KEY_TEST") == "s3cret密钥".encode()
