"""ImageNet VID loader on a tiny tree with the released layout, written per test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rgtp.data import (
    VID_CLASSES,
    iter_frames,
    list_sequences,
    load_sequence_annotations,
)

TRAIN_SEQ = "ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000"
VAL_SEQ = "ILSVRC2015_val_00000001"
W, H = 48, 32


def _xml(objects: list[tuple[int, str, tuple[int, int, int, int]]]) -> str:
    """An annotation file as the dataset writes it: (trackid, wnid, (x1, y1, x2, y2))."""
    body = "".join(
        f"<object><trackid>{tid}</trackid><name>{wnid}</name><bndbox><xmax>{x2}</xmax>"
        f"<xmin>{x1}</xmin><ymax>{y2}</ymax><ymin>{y1}</ymin></bndbox>"
        f"<occluded>0</occluded><generated>0</generated></object>"
        for tid, wnid, (x1, y1, x2, y2) in objects
    )
    return (
        f"<annotation><folder>x</folder><filename>x</filename><source><database>ILSVRC_2015"
        f"</database></source><size><width>{W}</width><height>{H}</height></size>{body}"
        f"</annotation>"
    )


def _frame_colour(t: int) -> tuple[int, int, int]:
    return (40 * t + 20, 100, 200 - 50 * t)


def _write_sequence(root: Path, split: str, seq: str, frames: list[str]) -> None:
    data = root / "Data" / "VID" / split / seq
    ann = root / "Annotations" / "VID" / split / seq
    data.mkdir(parents=True)
    ann.mkdir(parents=True)
    for t, xml in enumerate(frames):
        Image.new("RGB", (W, H), _frame_colour(t)).save(data / f"{t:06d}.JPEG", quality=95)
        (ann / f"{t:06d}.xml").write_text(xml)


@pytest.fixture
def vid_root(tmp_path: Path) -> Path:
    root = tmp_path / "ILSVRC2015"
    # A zebra (track 0) crossing, joined by a car (track 1) in frame 1; frame 2 is empty.
    _write_sequence(
        root,
        "train",
        TRAIN_SEQ,
        [
            _xml([(0, "n02391049", (1, 2, 20, 30))]),
            _xml([(0, "n02391049", (5, 2, 24, 30)), (1, "n02958343", (30, 10, 47, 31))]),
            _xml([]),
        ],
    )
    _write_sequence(
        root, "val", VAL_SEQ, [_xml([(3, "n02691156", (0, 0, 10, 10))]) for _ in range(3)]
    )
    return root


def test_vid_classes_follow_the_official_order():
    assert len(VID_CLASSES) == 30
    assert VID_CLASSES[:3] == ("airplane", "antelope", "bear")
    assert VID_CLASSES[-1] == "zebra" and VID_CLASSES.index("car") == 6


def test_list_sequences_handles_nested_train_and_flat_val(vid_root):
    assert list_sequences(vid_root, "train") == [TRAIN_SEQ]
    assert list_sequences(vid_root, "val") == [VAL_SEQ]
    _write_sequence(vid_root, "val", "ILSVRC2015_val_00000000", [_xml([])])
    assert list_sequences(vid_root, "val") == ["ILSVRC2015_val_00000000", VAL_SEQ]


def test_annotations_give_boxes_labels_and_track_ids(vid_root):
    frames = load_sequence_annotations(vid_root, "train", TRAIN_SEQ)
    assert len(frames) == 3
    assert [f.path.name for f in frames] == ["000000.JPEG", "000001.JPEG", "000002.JPEG"]
    assert frames[1].path == vid_root / "Data/VID/train" / TRAIN_SEQ / "000001.JPEG"
    assert (frames[0].width, frames[0].height) == (W, H)
    np.testing.assert_array_equal(frames[1].boxes, [[5, 2, 24, 30], [30, 10, 47, 31]])
    assert frames[1].boxes.dtype == np.float32
    assert [VID_CLASSES[i] for i in frames[1].labels] == ["zebra", "car"]
    assert frames[1].labels.dtype == np.int64
    assert frames[1].track_ids.tolist() == [0, 1]
    assert frames[2].boxes.shape == (0, 4) and frames[2].labels.shape == (0,)


def test_iter_frames_decodes_rgb_frames_with_step(vid_root):
    got = list(iter_frames(vid_root, "train", TRAIN_SEQ, step=2))
    assert [ann.path.stem for _, ann in got] == ["000000", "000002"]
    for (image, ann), t in zip(got, (0, 2), strict=True):
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        # JPEG is lossy, a flat colour survives within a few levels.
        np.testing.assert_allclose(image.mean(axis=(0, 1)), _frame_colour(t), atol=3)
        assert ann.width == W


def test_missing_root_split_and_sequence_are_named(vid_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_sequences(tmp_path / "nowhere", "val")
    with pytest.raises(FileNotFoundError, match="root must be the ILSVRC2015 folder"):
        list_sequences(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="split 'test'"):
        list_sequences(vid_root, "test")
    with pytest.raises(FileNotFoundError, match="ILSVRC2015_val_99999999"):
        load_sequence_annotations(vid_root, "val", "ILSVRC2015_val_99999999")


def test_missing_frame_is_named(vid_root):
    jpeg = vid_root / "Data/VID/val" / VAL_SEQ / "000001.JPEG"
    jpeg.unlink()
    with pytest.raises(FileNotFoundError, match=r"000001\.JPEG"):
        list(iter_frames(vid_root, "val", VAL_SEQ))


def test_unknown_wnid_is_an_error_naming_the_file(vid_root):
    xml = vid_root / "Annotations/VID/val" / VAL_SEQ / "000002.xml"
    xml.write_text(_xml([(0, "n99999999", (0, 0, 4, 4))]))
    with pytest.raises(ValueError, match=r"000002\.xml.*n99999999"):
        load_sequence_annotations(vid_root, "val", VAL_SEQ)


@pytest.mark.parametrize(
    "text, message",
    [
        ("<annotation><size><width>4", "malformed annotation XML"),
        ("<annotation></annotation>", "missing <size>"),
        (_xml([(0, "n02391049", (0, 0, 4, 4))]).replace("<xmax>4</xmax>", ""), "<xmax>"),
        (_xml([(0, "n02391049", (0, 0, 4, 4))]).replace("<trackid>0", "<trackid>a"), "<trackid>"),
    ],
)
def test_malformed_xml_is_an_error_naming_the_file(vid_root, text, message):
    xml = vid_root / "Annotations/VID/val" / VAL_SEQ / "000000.xml"
    xml.write_text(text)
    with pytest.raises(ValueError, match=r"000000\.xml") as info:
        load_sequence_annotations(vid_root, "val", VAL_SEQ)
    assert message in str(info.value)
