"""`SequenceClient` against a scripted stand-in for `tritonclient.grpc`'s client: which
failures it resends, how (the same request, or with START to resume), and what it leaves
to its caller. `test_triton_server` runs it against the real server."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from rgtp.serving import SequenceClient

FRAMES = [np.full((8, 8, 3), t, dtype=np.uint8) for t in range(4)]
DEADLINE = InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")
CANCELLED = InferenceServerException("Locally cancelled", status="StatusCode.CANCELLED")
DROPPED = InferenceServerException(
    "inference request for sequence 7 to model 'm' must specify the START flag on the first "
    "request of the sequence",
    status="StatusCode.INVALID_ARGUMENT",
)
REFUSED = InferenceServerException(
    "sequence 7 expects frame 1 (FRAME_INDEX 1), got 2", status="StatusCode.INVALID_ARGUMENT"
)


class ScriptedClient:
    """Answers each `infer` with the next of `script` (an exception is raised), and keeps
    what every request carried: (frame value, FRAME_INDEX, START, END, deadline)."""

    def __init__(self, *script) -> None:
        self.script, self.sent = list(script), []

    def infer(self, model, inputs, sequence_id, sequence_start, sequence_end, **kw):
        assert (model, sequence_id) == ("m", 7)
        tensors = {i.name(): i for i in inputs}
        assert set(tensors) == {"FRAME", "FRAME_INDEX"}
        assert tensors["FRAME"].datatype() == "UINT8"
        # tritonclient keeps an input's bytes privately (no getter): read them there
        index = int(np.frombuffer(tensors["FRAME_INDEX"]._raw_content, np.int64)[0])
        frame = tensors["FRAME"]._raw_content[0]
        self.sent.append((frame, index, sequence_start, sequence_end, kw.get("client_timeout")))
        answer = self.script.pop(0) if self.script else "ok"
        if isinstance(answer, Exception):
            raise answer
        return (answer, index)


def test_frames_go_in_order_with_their_index_and_start_on_the_first() -> None:
    fake = ScriptedClient()
    seq = SequenceClient(fake, "m", 7, timeout_s=2.0)
    assert [seq.send(f) for f in FRAMES[:3]] == [("ok", 0), ("ok", 1), ("ok", 2)]
    assert fake.sent == [
        (0, 0, True, False, 2.0),
        (1, 1, False, False, 2.0),
        (2, 2, False, False, 2.0),
    ]
    # close: the last frame again, its index, END: its stored response frees the stream
    assert seq.close() == ("ok", 2)
    assert fake.sent[-1] == (2, 2, False, True, 2.0)
    assert seq.resumed == 0
    with pytest.raises(ValueError, match="sequence 7 is closed: start another to go on"):
        seq.send(FRAMES[3])
    assert len(fake.sent) == 4


def test_a_deadline_resends_the_same_request_and_a_drop_resumes_with_start() -> None:
    fake = ScriptedClient("ok", "ok", DEADLINE, CANCELLED, "ok", DROPPED, "ok")
    seq = SequenceClient(fake, "m", 7)
    for frame in FRAMES:
        seq.send(frame, timeout_s=0.5 if frame[0, 0, 0] == 2 else None)
    assert [s[:4] for s in fake.sent] == [
        (0, 0, True, False),
        (1, 1, False, False),
        (2, 2, False, False),  # its deadline passed:
        (2, 2, False, False),  # sent again, as it was; Triton had dropped the sequence:
        (2, 2, True, False),  # START at frame 2 resumes the model's stream
        (3, 3, False, False),  # refused, Triton dropped it again:
        (3, 3, True, False),
    ]
    assert [s[4] for s in fake.sent[2:5]] == [0.5] * 3  # each attempt with its deadline
    assert seq.resumed == 2 and seq.index == 4


def test_a_dropped_sequence_is_closed_with_start_and_end() -> None:
    fake = ScriptedClient("ok", DROPPED, "ok")
    seq = SequenceClient(fake, "m", 7)
    seq.send(FRAMES[0])
    assert seq.close() == ("ok", 0)
    assert [s[:4] for s in fake.sent[1:]] == [(0, 0, False, True), (0, 0, True, True)]


def test_what_a_resend_does_not_mend_is_raised_and_the_frame_keeps_its_index() -> None:
    fake = ScriptedClient("ok", REFUSED, DEADLINE, DEADLINE)
    seq = SequenceClient(fake, "m", 7, attempts=2)
    seq.send(FRAMES[0])
    with pytest.raises(InferenceServerException, match="expects frame 1"):
        seq.send(FRAMES[1])  # a refusal: no resend
    assert len(fake.sent) == 2 and seq.index == 1
    with pytest.raises(InferenceServerException, match="Deadline Exceeded"):
        seq.send(FRAMES[1])  # two attempts, both past their deadline
    assert [s[1] for s in fake.sent[2:]] == [1, 1] and seq.index == 1
    assert seq.send(FRAMES[1]) == ("ok", 1)  # sent again by the caller: still frame 1
    assert seq.index == 2


def test_a_close_before_any_frame_sends_nothing_and_attempts_are_checked() -> None:
    fake = ScriptedClient()
    assert SequenceClient(fake, "m", 7).close() is None and fake.sent == []
    with pytest.raises(ValueError, match="attempts is 0: at least 1"):
        SequenceClient(fake, "m", 7, attempts=0)
