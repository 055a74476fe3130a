"""Scene-cut detection on the patch embeddings (beyond the paper; docs/method.md, "Scene cuts").

After a cut, the caches hold keys and values of a scene that is gone, and last step's
importance, tracked onto the new one, points at nothing in it: every pruned step until the
next periodic reset mixes stale tokens into the new scene. A cut shows in what the runtime
already has, the raw patch embeddings z_0 of this step and of the step before (`StreamState
.prev_patches`): within a shot, most tokens at a grid position look much as they did one step
before; across a cut, almost none do. A step whose mean same-position cosine similarity falls
below a threshold is a cut, and the stream runs it as a reset step at once.

The statistic is one reduction over (N, C) (no window search): cheap next to the embedding
that made it, the same for any backbone (a ViViT tubelet's embeddings as a detector's).
"""

from __future__ import annotations

import torch

from rgtp.core.checks import check_real
from rgtp.core.tracking import row_cosine


def check_cut_threshold(threshold: object) -> float:
    """A cut threshold as a float in (-1, 1): a mean cosine similarity of patch embeddings
    below it is a cut (1 or more would call every step a cut, -1 none)."""
    return check_real("scene-cut threshold (mean patch cosine)", threshold, -1.0, 1.0, True, True)


def patch_similarity(patches: torch.Tensor, prev_patches: torch.Tensor) -> torch.Tensor:
    """Mean over the N grid positions of the cosine similarity of this step's patch embedding
    to the previous step's at the same position, a 0-d float32 tensor in [-1, 1].

    patches, prev_patches: (N, C) raw patch embeddings z_0, raster order."""
    if patches.shape != prev_patches.shape or patches.dim() != 2:
        raise ValueError(
            "patch similarity compares two (N, C) patch embeddings of one shape, got "
            f"{tuple(patches.shape)} and {tuple(prev_patches.shape)}"
        )
    return row_cosine(patches, prev_patches).float().mean()


def is_scene_cut(patches: torch.Tensor, prev_patches: torch.Tensor, threshold: float) -> bool:
    """Whether this step starts a new scene: `patch_similarity` below `threshold`. A host
    decision (a reset step runs other engines), so on a GPU it waits for the embedding."""
    return bool(patch_similarity(patches, prev_patches) < threshold)
