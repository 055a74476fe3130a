"""Top-1 of a ViViT classifier on SynthMotion's held-out split, and the single-step control.

The control asks whether the classifier needs time: the temporal transformer is fed one time
step's CLS feature repeated for every step, so it sees what that step shows and nothing of
how it changes. SynthMotion's frames are built so that one instant shows the object but not
its motion (`rgtp.data.synthmotion`), so the control can at best get the object right and
guess the motion: about a quarter of the dense figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from rgtp.data.synthmotion import CLASSES, MOTIONS, Clip
from rgtp.families.classification.data import clip_tensor
from rgtp.families.classification.vivit import ViViT


@dataclass
class ClassifyResult:
    """Top-1 figures over `clips` clips (fractions in [0, 1]).

    dense: the model as it is. single_step[i]: the temporal transformer fed step i's CLS
    feature for every step. object / motion: the dense prediction's object or motion right
    (whatever the other part says), which tells which half of the class is confused.
    confusion[true][predicted]: dense counts.
    """

    clips: int
    dense: float
    object: float
    motion: float
    single_step: list[float]
    confusion: list[list[int]]

    @property
    def single_step_best(self) -> float:
        return max(self.single_step)

    def summary(self) -> str:
        steps = ", ".join(f"{a:.3f}" for a in self.single_step)
        return (
            f"held-out top-1 over {self.clips} clips: dense {self.dense:.3f} "
            f"(object {self.object:.3f}, motion {self.motion:.3f}); single-step control "
            f"best {self.single_step_best:.3f}, mean {np.mean(self.single_step):.3f} "
            f"(per step: {steps})"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "single_step_best": self.single_step_best}


@torch.no_grad()
def logits_dense_and_single_step(
    model: ViViT, clips: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """clips (B, 3, T, S, S) -> dense logits (B, L) and single-step logits (s, B, L), row i
    with step i's CLS feature repeated over all s steps. The spatial encoder runs once."""
    feats = model.clip_features(clips)
    s = feats.shape[1]
    single = torch.stack(
        [model.temporal_head(feats[:, i : i + 1].expand(-1, s, -1)) for i in range(s)]
    )
    return model.temporal_head(feats), single


def classify(model: ViViT, clips: Sequence[Clip], batch_size: int = 16) -> ClassifyResult:
    """Dense and single-step top-1 of `model` (in eval mode while it runs) over `clips`."""
    was_training = model.training
    model.eval()
    dense, single = [], []
    for i in range(0, len(clips), batch_size):
        batch = clips[i : i + batch_size]
        d, s = logits_dense_and_single_step(model, clip_tensor(np.stack([c.frames for c in batch])))
        dense.append(d.argmax(-1))
        single.append(s.argmax(-1))
    model.train(was_training)
    labels = torch.tensor([c.label for c in clips])
    pred, single_pred = torch.cat(dense), torch.cat(single, dim=1)
    m = len(MOTIONS)
    confusion = torch.zeros(len(CLASSES), len(CLASSES), dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    return ClassifyResult(
        clips=len(clips),
        dense=(pred == labels).float().mean().item(),
        object=(pred // m == labels // m).float().mean().item(),
        motion=(pred % m == labels % m).float().mean().item(),
        single_step=(single_pred == labels).float().mean(dim=1).tolist(),
        confusion=confusion.tolist(),
    )
