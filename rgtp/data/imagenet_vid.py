"""ImageNet VID (ILSVRC2015) read from its released directory layout.

root is the ILSVRC2015 directory:

    root/Data/VID/<split>/<sequence>/<frame:06d>.JPEG
    root/Annotations/VID/<split>/<sequence>/<frame:06d>.xml

Train sequences sit one folder deeper (`ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000`),
val sequences directly under `val/`; a sequence id is its path relative to the split folder.
Boxes are kept as the XML gives them (xmin, ymin, xmax, ymax in pixels).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rgtp._optional import require

_WNIDS: tuple[tuple[str, str], ...] = (
    ("n02691156", "airplane"),
    ("n02419796", "antelope"),
    ("n02131653", "bear"),
    ("n02834778", "bicycle"),
    ("n01503061", "bird"),
    ("n02924116", "bus"),
    ("n02958343", "car"),
    ("n02402425", "cattle"),
    ("n02084071", "dog"),
    ("n02121808", "domestic_cat"),
    ("n02503517", "elephant"),
    ("n02118333", "fox"),
    ("n02510455", "giant_panda"),
    ("n02342885", "hamster"),
    ("n02374451", "horse"),
    ("n02129165", "lion"),
    ("n01674464", "lizard"),
    ("n02484322", "monkey"),
    ("n03790512", "motorcycle"),
    ("n02324045", "rabbit"),
    ("n02509815", "red_panda"),
    ("n02411705", "sheep"),
    ("n01726692", "snake"),
    ("n02355227", "squirrel"),
    ("n02129604", "tiger"),
    ("n04468005", "train"),
    ("n01662784", "turtle"),
    ("n04530566", "watercraft"),
    ("n02062744", "whale"),
    ("n02391049", "zebra"),
)
VID_CLASSES: tuple[str, ...] = tuple(name for _, name in _WNIDS)
WNID_TO_LABEL: dict[str, int] = {wnid: i for i, (wnid, _) in enumerate(_WNIDS)}


@dataclass
class FrameAnnotation:
    path: Path  # the frame's JPEG
    width: int
    height: int
    boxes: np.ndarray  # (D, 4) float32 x1, y1, x2, y2 pixels
    labels: np.ndarray  # (D,) int64 index into VID_CLASSES
    track_ids: np.ndarray  # (D,) int64, stable per object within the sequence


def _split_dirs(root: str | Path, split: str) -> tuple[Path, Path]:
    """(Data/VID/<split>, Annotations/VID/<split>) under root, checked to exist."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet VID root {root} does not exist")
    data, annotations = root / "Data" / "VID" / split, root / "Annotations" / "VID" / split
    for d in (data.parent, annotations.parent):
        if not d.is_dir():
            raise FileNotFoundError(f"{d} does not exist; root must be the ILSVRC2015 folder")
    for d in (data, annotations):
        if not d.is_dir():
            raise FileNotFoundError(f"split {split!r} not found: {d} does not exist")
    return data, annotations


def list_sequences(root: str | Path, split: str) -> list[str]:
    """Sorted sequence ids of a split: folders holding annotation XMLs, relative to it."""
    _, annotations = _split_dirs(root, split)
    sequences = []
    for dirpath, dirnames, filenames in os.walk(annotations):
        if any(f.endswith(".xml") for f in filenames):
            sequences.append(Path(dirpath).relative_to(annotations).as_posix())
            dirnames.clear()  # a sequence folder holds frames, not further sequences
    return sorted(sequences)


def _int_field(element: ET.Element, tag: str, path: Path) -> int:
    """Integer text of element's child `tag`; ValueError naming the file if absent/bad."""
    text = element.findtext(tag)
    try:
        return int(float(text))  # some tools write "12.0"
    except (TypeError, ValueError):
        raise ValueError(f"{path}: missing or non-numeric <{tag}>") from None


def parse_annotation(xml_path: Path, jpeg_path: Path) -> FrameAnnotation:
    """One frame's XML -> FrameAnnotation (boxes in XML order)."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"malformed annotation XML {xml_path}: {e}") from None
    size = root.find("size")
    if size is None:
        raise ValueError(f"{xml_path}: missing <size>")
    boxes, labels, track_ids = [], [], []
    for obj in root.iter("object"):
        wnid = (obj.findtext("name") or "").strip()
        if wnid not in WNID_TO_LABEL:
            raise ValueError(f"{xml_path}: unknown WordNet id {wnid!r}, not a VID class")
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{xml_path}: <object> without <bndbox>")
        boxes.append([_int_field(box, tag, xml_path) for tag in ("xmin", "ymin", "xmax", "ymax")])
        labels.append(WNID_TO_LABEL[wnid])
        track_ids.append(_int_field(obj, "trackid", xml_path))
    return FrameAnnotation(
        path=jpeg_path,
        width=_int_field(size, "width", xml_path),
        height=_int_field(size, "height", xml_path),
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.array(labels, dtype=np.int64),
        track_ids=np.array(track_ids, dtype=np.int64),
    )


def load_sequence_annotations(root: str | Path, split: str, seq: str) -> list[FrameAnnotation]:
    """Annotations of every frame of sequence `seq`, in frame order."""
    data, annotations = _split_dirs(root, split)
    seq_dir = annotations / seq
    xmls = sorted(seq_dir.glob("*.xml")) if seq_dir.is_dir() else []
    if not xmls:
        raise FileNotFoundError(f"no annotation XMLs in {seq_dir}")
    return [parse_annotation(x, data / seq / f"{x.stem}.JPEG") for x in xmls]


def iter_frames(
    root: str | Path, split: str, seq: str, step: int = 1
) -> Iterator[tuple[np.ndarray, FrameAnnotation]]:
    """Every step-th frame of a sequence: image (H, W, 3) uint8 RGB and its annotation."""
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    image_module = require("PIL.Image", "eval", "ImageNet VID reader")
    for ann in load_sequence_annotations(root, split, seq)[::step]:
        if not ann.path.is_file():
            raise FileNotFoundError(f"frame {ann.path} is missing")
        with image_module.open(ann.path) as im:
            image = np.asarray(im.convert("RGB"))
        if image.shape[:2] != (ann.height, ann.width):
            raise ValueError(
                f"{ann.path} is {image.shape[1]}x{image.shape[0]} but its annotation says "
                f"{ann.width}x{ann.height}"
            )
        yield image, ann
