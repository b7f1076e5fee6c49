"""Contract tests of what ties a case to the clinic's records (CaseInfo): stored with
the case, replaced, searched by reference, checked, gone with the case."""
from __future__ import annotations

import pytest

from device.exc import InputError, NotFoundError
from device.store import CaseInfo, CaseStore
from tests.device.store.contract import add


def test_info_is_stored_with_the_case_without_the_files_folders(cases: CaseStore) -> None:
    # Execute
    case = add(cases, info=CaseInfo("ACC-0042", "left frontal", "C:\\scans\\Doe^Jane.png"))
    plain = add(cases)
    # Assert
    assert cases.get_info(case.id) == CaseInfo("ACC-0042", "left frontal", "Doe^Jane.png")
    assert cases.get_info(plain.id) == CaseInfo()


def test_set_info_replaces_reference_and_note_and_keeps_the_file_name(cases: CaseStore):
    case = add(cases, info=CaseInfo("A-1", "", "slice.png"))

    info = cases.set_info(case.id, "  A-2 ", "seen by\ntwo readers")

    assert info == cases.get_info(case.id) == CaseInfo("A-2", "seen by\ntwo readers",
                                                       "slice.png")
    with pytest.raises(NotFoundError):
        cases.set_info("0" * 32, "A-3", "")


def test_list_and_count_find_cases_by_part_of_their_reference(cases: CaseStore) -> None:
    # Prepare: the characters LIKE would treat as wildcards are taken literally.
    first = add(cases, info=CaseInfo("ACC-100%"))
    second = add(cases, info=CaseInfo("acc-2_b"))
    add(cases, info=CaseInfo("", "a note, no reference"))
    # Execute / Assert
    assert [c.id for c in cases.list(reference="acc")] == [second.id, first.id]
    assert cases.count(reference="ACC") == 2 and cases.count(reference="") == 3
    assert [c.id for c in cases.list(reference="100%")] == [first.id]
    assert cases.count(reference="2%b") == 0 and cases.count(reference="c-2_") == 1
    assert cases.count("confirmed", reference="acc") == 0


@pytest.mark.parametrize("info, message", [
    (CaseInfo("x" * 65), "reference must be text of at most 64"),
    (CaseInfo("a\tb"), "reference holds control characters"),
    (CaseInfo("", "n" * 501), "note must be text of at most 500"),
    (CaseInfo("", "bell\a"), "note holds control characters"),
    (CaseInfo("", "", "line\nbreak.png"), "file name holds control characters"),
])
def test_bad_info_stores_nothing(cases: CaseStore, info: CaseInfo, message: str) -> None:
    with pytest.raises(InputError, match=message):
        add(cases, info=info)
    assert cases.count() == 0


def test_info_goes_with_its_case(cases: CaseStore) -> None:
    case = add(cases, info=CaseInfo("ACC-7", "note"))

    cases.delete(case.id)

    assert cases.count(reference="ACC-7") == 0
    with pytest.raises(NotFoundError):
        cases.get_info(case.id)
