"""RecordLog keeps records in append order across reopen and compacts atomically."""

from __future__ import annotations

from pathlib import Path

import plyvel

from ledger.record_log import RecordLog, RecordWrite


def test_records_survive_reopen_in_append_order(tmp_path: Path) -> None:
    db = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    log = RecordLog(db)
    log.append([b"a", b"b"])
    log.append([b"c"])
    db.close()
    db = plyvel.DB(str(tmp_path / "db"))
    log = RecordLog(db)
    assert log.load() == [b"a", b"b", b"c"]
    log.append([b"d"])
    assert log.load() == [b"a", b"b", b"c", b"d"]
    db.close()


def test_replace_swaps_the_whole_log_and_numbering_restarts(tmp_path: Path) -> None:
    db = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    log = RecordLog(db)
    log.append([i.to_bytes(2, "big") for i in range(300)])
    log.replace([b"x", b"y"])
    assert log.load() == [b"x", b"y"] and len(log) == 2
    log.append([b"z"])
    assert RecordLog(db).load() == [b"x", b"y", b"z"]
    db.put(b"other/key", b"untouched")
    log.replace([])
    assert log.load() == [] and db.get(b"other/key") == b"untouched"
    db.close()


def test_write_group_applies_appends_and_replacements_in_order_as_one_batch(
        tmp_path: Path) -> None:
    db = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    log = RecordLog(db)
    log.append([b"old1", b"old2"])
    log.write_group([RecordWrite((b"a",)), RecordWrite((b"b", b"c"))])
    assert log.load() == [b"old1", b"old2", b"a", b"b", b"c"]
    # A replacement inside a group drops what was stored and what the group appended
    # before it; appends after it follow the replacement.
    log.write_group([RecordWrite((b"lost",)), RecordWrite((b"x",), replace=True),
                     RecordWrite((b"y",)), RecordWrite((b"z",))])
    assert log.load() == [b"x", b"y", b"z"]
    log.append([b"w"])
    db.close()
    db = plyvel.DB(str(tmp_path / "db"))
    assert RecordLog(db).load() == [b"x", b"y", b"z", b"w"]
    db.close()


def test_write_group_with_nothing_to_write_changes_nothing(tmp_path: Path) -> None:
    db = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    log = RecordLog(db)
    log.append([b"a"])
    log.write_group([])
    log.write_group([RecordWrite(())])
    log.append([b"b"])
    assert log.load() == [b"a", b"b"]
    db.close()
