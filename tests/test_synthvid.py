"""SynthVID: determinism, ground-truth validity, motion, sampling, occlusion, COCO export."""

from __future__ import annotations

import contextlib
import io
import itertools

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rgtp.data import (
    CLASSES,
    HELDOUT_SEED_BASE,
    SynthVIDConfig,
    generate_sequence,
    heldout_seeds,
    load_coco,
    sequences_to_coco,
    training_samples,
    training_seeds,
    write_coco,
)
from rgtp.data.synthvid import Layer, composite

SMALL = SynthVIDConfig(size=128, num_frames=16)


@pytest.fixture(scope="module")
def small_sequences():
    return [generate_sequence(seed, SMALL) for seed in heldout_seeds(12)]


def _centres(seq) -> dict[int, dict[int, np.ndarray]]:
    """track id -> {frame index: box centre (2,)} over a sequence."""
    out: dict[int, dict[int, np.ndarray]] = {}
    for t, (boxes, ids) in enumerate(zip(seq.boxes, seq.track_ids, strict=True)):
        for box, i in zip(boxes, ids, strict=True):
            out.setdefault(int(i), {})[t] = (box[:2] + box[2:]) / 2
    return out


def _assert_same(a, b) -> None:
    np.testing.assert_array_equal(a.frames, b.frames)
    for field in ("boxes", "labels", "track_ids"):
        for x, y in zip(getattr(a, field), getattr(b, field), strict=True):
            np.testing.assert_array_equal(x, y)


def test_same_seed_is_bitwise_identical_and_seeds_differ():
    cfg = SynthVIDConfig(size=96, num_frames=6)
    _assert_same(generate_sequence(5, cfg), generate_sequence(5, cfg))
    other = generate_sequence(6, cfg)
    assert not np.array_equal(generate_sequence(5, cfg).frames, other.frames)


def test_shapes_dtypes_and_boxes_are_valid(small_sequences):
    size = SMALL.size
    for seq in small_sequences:
        assert seq.frames.shape == (SMALL.num_frames, size, size, 3)
        assert seq.frames.dtype == np.uint8
        assert len(seq.boxes) == len(seq.labels) == len(seq.track_ids) == SMALL.num_frames
        for boxes, labels, ids in zip(seq.boxes, seq.labels, seq.track_ids, strict=True):
            assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4)
            assert labels.dtype == np.int64 and ids.dtype == np.int64
            assert np.all((labels >= 0) & (labels < len(CLASSES)))
            assert len(set(ids.tolist())) == len(ids)  # one box per object
            assert np.all(boxes >= 0) and np.all(boxes <= size)
            assert np.all(boxes[:, 2:] - boxes[:, :2] >= 6)
        # The frame is not a flat colour: a photo is behind the objects.
        assert seq.frames[0].std() > 5


def test_frames_are_annotated_and_every_class_appears(small_sequences):
    seen = {int(label) for seq in small_sequences for labels in seq.labels for label in labels}
    assert seen == set(range(len(CLASSES)))
    per_frame = [len(b) for seq in small_sequences for b in seq.boxes]
    assert np.mean(per_frame) >= 1.5
    assert max(per_frame) <= SMALL.max_objects


def test_objects_move(small_sequences):
    speeds = []
    for seq in small_sequences:
        for track in _centres(seq).values():
            ts = sorted(track)
            for a, b in itertools.pairwise(ts):
                speeds.append(np.linalg.norm(track[b] - track[a]) / (b - a))
    # Objects move ~1 px per frame at 128 px with sampling 1; none is frozen in place.
    assert 0.4 < np.mean(speeds) < 4
    assert np.mean(np.array(speeds) > 0) > 0.7


def test_annotations_appear_and_disappear():
    appear = disappear = 0
    for seed in heldout_seeds(6):
        seq = generate_sequence(seed, SynthVIDConfig(size=128, num_frames=16, sampling=4))
        present = [set(ids.tolist()) for ids in seq.track_ids]
        for before, after in itertools.pairwise(present):
            appear += len(after - before)
            disappear += len(before - after)
    assert appear > 0 and disappear > 0


def test_sampling_shows_every_kth_frame_of_the_same_motion():
    seed, k = HELDOUT_SEED_BASE + 3, 4
    dense = generate_sequence(seed, SynthVIDConfig(size=96, num_frames=13, sampling=1))
    sparse = generate_sequence(seed, SynthVIDConfig(size=96, num_frames=4, sampling=k))
    np.testing.assert_array_equal(sparse.frames, dense.frames[::k])
    for t in range(4):
        np.testing.assert_array_equal(sparse.boxes[t], dense.boxes[t * k])


def _mean_step(seq, size: int) -> float:
    """Mean box-centre displacement per frame of boxes not touching the frame border."""
    steps = []
    for t in range(len(seq.boxes) - 1):
        inside = [
            {
                int(i): b
                for i, b in zip(seq.track_ids[s], seq.boxes[s], strict=True)
                if b.min() > 0 and b.max() < size
            }
            for s in (t, t + 1)
        ]
        for i in inside[0].keys() & inside[1].keys():
            a, b = inside[0][i], inside[1][i]
            steps.append(np.linalg.norm((a[:2] + a[2:] - b[:2] - b[2:]) / 2))
    return float(np.mean(steps))


def test_sampling_4_moves_about_4x_further_per_frame():
    size, seeds = 256, heldout_seeds(4)
    step = {
        k: np.mean(
            [
                _mean_step(generate_sequence(s, SynthVIDConfig(size, 12, sampling=k)), size)
                for s in seeds
            ]
        )
        for k in (1, 4)
    }
    # A bit under 4: wobbles curve within 4 base frames and boxes are whole pixels.
    assert 3.0 < step[4] / step[1] < 5.0


def _solid(y0: int, x0: int, h: int, w: int, label: int, track_id: int) -> Layer:
    rgba = np.ones((h, w, 4), dtype=np.float32)
    return Layer(y0, x0, rgba, float(h * w), label, track_id)


def test_fully_covered_object_gets_no_box():
    background = np.zeros((64, 64, 3), dtype=np.float32)
    back, front = _solid(10, 10, 12, 12, 0, 7), _solid(5, 5, 30, 30, 1, 8)
    image, boxes, labels, ids = composite(background, [back, front])
    assert ids.tolist() == [8] and labels.tolist() == [1]
    np.testing.assert_array_equal(boxes, [[5, 5, 35, 35]])
    assert image[20, 20].tolist() == [255, 255, 255] and image[50, 50].tolist() == [0, 0, 0]
    # The same pair in the other z-order: both visible, the small one in front.
    _, _, _, ids = composite(background, [front, back])
    assert ids.tolist() == [7, 8]


def test_partly_covered_object_gets_the_box_of_its_visible_part():
    background = np.zeros((96, 96, 3), dtype=np.float32)
    back = _solid(10, 10, 40, 40, 0, 1)  # rows and columns 10..49
    half = _solid(0, 30, 96, 60, 2, 2)  # hides columns 30..: half of the back object
    _, boxes, _, ids = composite(background, [back, half])
    assert ids.tolist() == [2, 1]
    np.testing.assert_array_equal(boxes[1], [10, 10, 30, 50])
    # 12 of 40 columns visible is 30%: kept; 11 columns is under 30%: dropped.
    _, _, _, ids = composite(background, [back, _solid(0, 22, 96, 60, 2, 2)])
    assert ids.tolist() == [2, 1]
    _, _, _, ids = composite(background, [back, _solid(0, 21, 96, 60, 2, 2)])
    assert ids.tolist() == [2]


def test_thin_boxes_are_dropped():
    background = np.zeros((64, 64, 3), dtype=np.float32)
    _, _, _, ids = composite(background, [_solid(4, 4, 30, 5, 0, 1), _solid(4, 20, 30, 6, 0, 2)])
    assert ids.tolist() == [2]


def test_box_is_tight_around_alpha_above_half():
    # A soft blob: alpha > 0 over the whole 30 x 40 layer, > 0.5 only on an inner ellipse.
    yy, xx = np.mgrid[0:30, 0:40]
    alpha = np.exp(-(((yy - 14.5) / 8) ** 2 + ((xx - 19.5) / 11) ** 2)).astype(np.float32)
    rgba = np.concatenate([np.zeros((30, 40, 3), np.float32), alpha[:, :, None]], axis=2)
    layer = Layer(7, 3, rgba, float((alpha > 0.5).sum()), 0, 0)
    _, boxes, _, _ = composite(np.ones((64, 64, 3), np.float32), [layer])
    rows, cols = np.flatnonzero((alpha > 0.5).any(1)), np.flatnonzero((alpha > 0.5).any(0))
    expected = [3 + cols[0], 7 + rows[0], 4 + cols[-1], 8 + rows[-1]]
    np.testing.assert_array_equal(boxes[0], expected)
    assert boxes[0, 2] - boxes[0, 0] < 30 and boxes[0, 3] - boxes[0, 1] < 20


def test_seed_sets_are_disjoint():
    train, held = training_seeds(1000), heldout_seeds(1000)
    assert not set(train) & set(held)
    assert max(train) < HELDOUT_SEED_BASE <= min(held)


def test_training_samples_are_deterministic_and_varied():
    cfg = SynthVIDConfig(size=96, num_frames=8)
    a = list(itertools.islice(training_samples(3, cfg), 10))
    b = list(itertools.islice(training_samples(3, cfg), 10))
    c = list(itertools.islice(training_samples(4, cfg), 10))
    for (ia, ba, la), (ib, bb, lb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ba, bb)
        np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a[0][0], c[0][0])
    image, boxes, labels = a[0]
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert boxes.shape == (len(labels), 4) and boxes.dtype == np.float32
    # Several scenes: backgrounds of samples 0 and 9 (different scenes) differ.
    assert not np.array_equal(a[0][0], a[9][0])


def test_coco_export_loads_in_pycocotools(small_sequences, tmp_path):
    seqs = small_sequences[:2]
    coco_dict = sequences_to_coco(seqs, CLASSES)
    write_coco(tmp_path / "gt.json", coco_dict)
    coco_dict = load_coco(tmp_path / "gt.json")

    gt = COCO()
    gt.dataset = coco_dict
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    n_frames = sum(len(s.boxes) for s in seqs)
    n_boxes = sum(len(b) for s in seqs for b in s.boxes)
    assert gt.getImgIds() == list(range(1, n_frames + 1))
    assert len(gt.getAnnIds()) == n_boxes
    assert [c["name"] for c in gt.loadCats(gt.getCatIds())] == list(CLASSES)
    first = gt.loadImgs(1)[0]
    assert first["file_name"] == f"seq{seqs[0].seed}/000000.jpg" and first["frame_index"] == 0
    ann = gt.loadAnns(gt.getAnnIds(imgIds=[1]))[0]
    x1, y1, x2, y2 = seqs[0].boxes[0][0]
    assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1]
    assert ann["category_id"] == seqs[0].labels[0][0] + 1

    # The ground truth scored as detections is a perfect result.
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in coco_dict["annotations"]
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
