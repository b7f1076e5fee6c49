"""Which side of the local gate a case is on: its study's, else its image's."""
from __future__ import annotations

import cv2
import numpy as np

from device.gate import held_out
from device.store import CaseInfo, CaseStore
from device.store.base import StudyRef
from tests.device.store.contract import add


def png(value: int) -> bytes:
    ok, data = cv2.imencode(".png", np.full((8, 8), value, np.uint8))
    assert ok
    return data.tobytes()


def test_a_study_and_an_image_each_stay_on_one_side_of_the_gate(cases: CaseStore) -> None:
    """A study's slices share their study's side, a slice outside any study its image's:
    the same image uploaded twice cannot be both trained on and judged on."""
    study = "3" + "a" * 31  # a held-out study
    images = [png(v) for v in range(40)]
    in_study = [add(cases, png=image, info=CaseInfo(study=StudyRef(study, "archive")))
                for image in images]
    twice = [add(cases, png=image) for image in images for _ in range(2)]

    keys = cases.gate_keys([c.id for c in in_study + twice])
    sides = held_out(cases, [c.id for c in in_study + twice])

    assert keys[:40] == [study] * 40 and sides[:40].all()
    assert keys[40:] == [c.image_sha256 for c in twice]
    assert (sides[40::2] == sides[41::2]).all()
    assert 0 < sides[40:].sum() < 80  # some images held out, not all
    # a case deleted between listing and this read: its own id decides, no error
    assert cases.gate_keys(["f" * 32, twice[0].id]) == ["f" * 32, twice[0].image_sha256]
