"""The paper preset's differences from rgtp's method, each against a reference written here
from the authors' definition (their ViViT / ViTDet evaluation configurations), not from
rgtp's code: the cache-free ViViT step, the 1024-px importance mixing, the off-grid rule of
tracking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rgtp.core.rollout import keep_previous
from rgtp.core.selection import FixedKeep
from rgtp.core.tracking import match_tokens
from rgtp.families.classification.vivit import ViViT
from rgtp.models.cache_free_stage import CacheFreeStage, CacheFreeStepper
from rgtp.models.config import PruningConfig
from tests.conftest import TINY_VIVIT, moving_frames, randomize

# 96 px: a 6 x 6 grid, N = 36 patch tokens and the CLS.
CFG = TINY_VIVIT
GRID = CFG.spatial.grid
N = CFG.spatial.num_tokens


@pytest.fixture(scope="module")
def vivit() -> ViViT:
    torch.manual_seed(0)
    return randomize(ViViT(CFG))


@pytest.fixture(scope="module")
def steps(vivit) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Ten time steps of a moving video: (z_0 (N, C), tokens (1 + N, C)) each."""
    frames = np.stack(list(moving_frames(20, 96, seed=3, speed=4.0)))
    clip = torch.from_numpy(frames).permute(3, 0, 1, 2).float()  # (3, T, S, S)
    out = []
    with torch.no_grad():
        for t in range(10):
            z, tokens = vivit.embed(clip[None, :, 2 * t : 2 * t + 2])
            out.append((z[0], tokens[0]))
    return out


# ---- the authors' definition, written out ----


def ref_attention(block, x):
    """Pre-norm attention with its residual: x (M, C) -> (x', probabilities (h, M, M),
    keys averaged over heads (M, d))."""
    m, c = x.shape
    h = block.attn.num_heads
    y = F.layer_norm(x, (c,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
    qkv = y @ block.attn.qkv.weight.t() + block.attn.qkv.bias
    q, k, v = qkv.view(m, 3, h, c // h).permute(1, 2, 0, 3)
    a = torch.softmax(q @ k.transpose(1, 2) / (c // h) ** 0.5, dim=-1)
    o = (a @ v).permute(1, 0, 2).reshape(m, c) @ block.attn.proj.weight.t() + block.attn.proj.bias
    return x + o, a, k.mean(dim=0)


def ref_mlp(block, x):
    c = x.shape[1]
    y = F.layer_norm(x, (c,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
    return x + block.mlp.fc2(F.gelu(block.mlp.fc1(y)))


def ref_hat(a):
    """RMS over heads, (A + I) / 2, rows normalised over every column."""
    f = a.square().mean(dim=0).sqrt()
    f = (f + torch.eye(f.shape[0])) / 2
    return f / f.sum(dim=-1, keepdim=True)


def ref_step(model, tokens, keep):
    """Their pruned ViViT step on `keep` (K,) patch indices in their order: (CLS feature (C,),
    importance (N,))."""
    blocks = model.spatial.blocks
    x, a0, keys = ref_attention(blocks[0], tokens)
    idx = torch.cat([torch.zeros(1, dtype=torch.long), keep + 1])
    x = ref_mlp(blocks[0], x[idx])
    attentions = []
    for block in blocks[1:]:
        y, a, _ = ref_attention(block, x)
        x = ref_mlp(block, y)
        attentions.append(a)
    # forward rollout product: Â_0 reduced to the kept rows and columns, then the later blocks
    r = ref_hat(a0)[idx][:, idx]
    for a in attentions:
        r = ref_hat(a) @ r
    mask = torch.zeros(N)
    mask[keep] = r[0, 1:]
    dropped = torch.tensor([i for i in range(N) if i not in set(keep.tolist())], dtype=torch.long)
    if dropped.numel():  # each dropped token: its most similar kept one by block-0 keys
        m = keys[1:]
        mask[dropped] = mask[keep[(m[dropped] @ m[keep].t()).argmax(dim=1)]]
    return model.cls_features(x[None])[0], mask / mask.sum()


def ref_match(prev_z, z, grid, r):
    """Their tracking: prev_z zero-padded by r, every (dy, dx) in raster order, scores equal to
    0 set to -100, the first maximum wins, an off-grid winner reads token 0."""
    c = z.shape[1]
    padded = F.pad(prev_z.view(grid, grid, c), (0, 0, r, r, r, r))
    out = torch.empty(grid * grid, dtype=torch.long)
    for y in range(grid):
        for x in range(grid):
            scores, cells = [], []
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    scores.append(float(z[y * grid + x] @ padded[y + r + dy, x + r + dx]))
                    on = 0 <= y + dy < grid and 0 <= x + dx < grid
                    cells.append((y + dy) * grid + x + dx if on else 0)
            s = torch.tensor(scores)
            s[s == 0.0] = -100.0
            out[y * grid + x] = cells[int(s.argmax())]
    return out


def ref_checkerboard(grid):
    """Their 1-in-2 reset: row y keeps the even columns when y is even, the odd ones else."""
    return torch.tensor([y * grid + x for y in range(grid) for x in range(grid) if x % 2 == y % 2])


# ---- the tests ----


def test_paper_vivit_steps_match_the_authors_definition(vivit, steps) -> None:
    """Step 0 all tokens, step 4 the checkerboard, the others the top K of tracked importance:
    kept sets, CLS features and importance as their definition gives them (reset every 4 so
    that a reset step is among the ten)."""
    k, every = 14, 4
    stepper = CacheFreeStepper(CacheFreeStage(vivit.spatial.blocks), GRID, k, every, radius=1)
    prev_s = prev_z = None
    with torch.no_grad():
        for t, (z, tokens) in enumerate(steps):
            if t == 0:
                keep = torch.arange(N)
            elif t % every == 0:
                keep = ref_checkerboard(GRID)
            else:
                tracked = prev_s[ref_match(prev_z, z, GRID, 1)]
                # tracking copies values, so ties are common; their argsort is not stable
                # (ties in no defined order): here ties go to the lower index, as rgtp's
                keep = tracked.sort(descending=True, stable=True).indices[:k]
            feature, s = ref_step(vivit, tokens, keep)
            got = stepper.step(z, tokens)
            assert torch.equal(got.keep.sort().values, keep.sort().values), t
            assert got.tokens.shape == (1 + len(keep), CFG.spatial.embed_dim)
            assert (vivit.cls_features(got.tokens[None])[0] - feature).abs().max() <= 1e-5, t
            assert (got.importance - s).abs().max() <= 1e-5, t
            prev_s, prev_z = s, z


def test_paper_vivit_keeping_every_token_is_the_dense_encoder(vivit, steps) -> None:
    stepper = CacheFreeStepper(CacheFreeStage(vivit.spatial.blocks), GRID, N, 8, radius=1)
    with torch.no_grad():
        for t, (z, tokens) in enumerate(steps[:4]):
            got = stepper.step(z, tokens)
            x = tokens[None]
            for block in vivit.spatial.blocks:
                x, _ = block(x)
            dense = vivit.cls_features(x)[0]
            assert got.keep.numel() == N
            assert (vivit.cls_features(got.tokens[None])[0] - dense).abs().max() <= 1e-5, t
            _, s = ref_step(vivit, tokens, torch.arange(N))
            assert (got.importance - s).abs().max() <= 1e-5, t


def test_paper_preset_for_a_cls_model_is_cache_free() -> None:
    p = PruningConfig.paper(224, cls_token=True)
    assert p.cache_free and p.off_grid == "authors" and p.rollout_pool == 1
    assert not p.keep_previous and p.novelty_share == 0 and p.similarity == "dot"
    with pytest.raises(ValueError, match="unpooled"):
        PruningConfig.paper(224, rollout_pool=2, cls_token=True)
    with pytest.raises(ValueError, match="no novelty share"):
        PruningConfig(cache_free=True, novelty_share=0.3)
    with pytest.raises(ValueError, match="cannot keep"):
        CacheFreeStepper(CacheFreeStage([torch.nn.Identity()]), GRID, N + 1)


def test_paper_at_1024_keeps_the_previous_importance_of_tokens_not_computed() -> None:
    assert PruningConfig.paper(1024).keep_previous
    assert not PruningConfig.paper(672).keep_previous
    assert PruningConfig.paper(672, rollout_pool=1).keep_previous  # their unpooled code path
    with pytest.raises(ValueError, match="unpooled"):
        PruningConfig(keep_previous=True, rollout_pool=2)


def test_keep_previous_matches_the_authors_mixing() -> None:
    g = torch.Generator().manual_seed(0)
    now, prev = torch.rand(N, generator=g), torch.rand(N, generator=g)
    now, prev = now / now.sum(), prev / prev.sum()
    computed = torch.randperm(N, generator=g)[:10]
    # theirs: where(token pruned, last frame's map, this frame's rollout), then / its sum
    pruned = torch.ones(N, dtype=torch.bool)
    pruned[computed] = False
    ref = torch.where(pruned, prev, now)
    assert (keep_previous(now, prev, computed) - ref / ref.sum()).abs().max() <= 1e-6


def test_a_stream_with_keep_previous_mixes_as_the_authors(pipe, frames) -> None:
    """The same two frames through rgtp's rollout and the paper's mixing: on the pruned frame
    the second's importance is the first's with the tokens not kept taking frame 0's."""
    n = pipe.plan.num_tokens
    base = PruningConfig(rollout_pool=1)
    ours = pipe.new_stream(policy=FixedKeep(n // 4), pruning=base)
    theirs = pipe.new_stream(
        policy=FixedKeep(n // 4), pruning=PruningConfig(rollout_pool=1, keep_previous=True)
    )
    a0, b0 = ours.step(frames[0]), theirs.step(frames[0])
    assert torch.equal(a0.importance, b0.importance)  # a reset frame computes every token
    a1, b1 = ours.step(frames[1]), theirs.step(frames[1])
    assert torch.equal(a1.keep, b1.keep)
    pruned = torch.ones(n, dtype=torch.bool)
    pruned[a1.keep] = False
    ref = torch.where(pruned, a0.importance, a1.importance)
    assert (b1.importance - ref / ref.sum()).abs().max() <= 1e-6
    assert (b1.importance - a1.importance).abs().max() > 1e-6  # and it is a difference


def _negative_window_case(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames on a 4 x 4 grid where the last token (bottom-right corner) scores
    -scale * (11, 12, 15, 16) against its on-grid window (tokens 10, 11, 14, 15) of the last
    frame: every in-window similarity negative; the other tokens match themselves."""
    prev = torch.arange(1.0, 17.0).unsqueeze(1)  # (16, 1)
    z = prev.clone()
    z[15] = -scale
    return prev, z


@pytest.mark.parametrize("scale, padding_wins", [(0.5, False), (10.0, True)])
def test_tracking_off_grid_rule_against_the_authors(scale: float, padding_wins: bool) -> None:
    """A corner token with every in-window similarity negative: their padding wins only when
    all are below -100 (scores of exactly 0, the padding's, become -100 first), and the token
    then reads token 0's importance, from outside its window. rgtp's rule never takes an
    off-grid cell: it picks the best real neighbour."""
    prev, z = _negative_window_case(scale)
    window = torch.tensor([10, 11, 14, 15])
    sims = z[15] @ prev[window].t()
    assert (sims < 0).all() and bool((sims < -100).all()) == padding_wins
    theirs = match_tokens(prev, z, 4, 1, "dot", off_grid="authors")
    assert torch.equal(theirs, ref_match(prev, z, 4, 1))
    ours = match_tokens(prev, z, 4, 1, "dot")
    assert int(ours[15]) == int(window[sims.argmax()]) == 10
    assert int(theirs[15]) == (0 if padding_wins else 10)
    assert torch.equal(theirs[:15], ours[:15])


def test_tracking_off_grid_rule_on_random_embeddings() -> None:
    """Large random embeddings (scores of hundreds, many below -100): theirs as their
    definition, everywhere on the grid."""
    g = torch.Generator().manual_seed(4)
    prev, z = 12 * torch.randn(25, 8, generator=g), 12 * torch.randn(25, 8, generator=g)
    assert torch.equal(match_tokens(prev, z, 5, 1, off_grid="authors"), ref_match(prev, z, 5, 1))
    assert torch.equal(match_tokens(prev, z, 5, 2, off_grid="authors"), ref_match(prev, z, 5, 2))


def test_export_with_paper_exports_the_cache_free_vivit(tmp_path) -> None:
    """`--paper` means the authors' method: for ViViT the cache-free one (one stage, no
    caches; not the ViTDet preset, whose pooled rollout a CLS model cannot use), and the
    package's streams run it by default."""
    from rgtp.cli import main
    from rgtp.package.manifest import Manifest
    from rgtp.runtime import Pipeline

    out = tmp_path / "pkg"
    argv = ["export", "--model", "vivit-small", "--size", "64", "--random-init", "--paper"]
    assert main([*argv, "--buckets", "6", "--no-symbolic", "--out", str(out), "-q"]) == 0
    plan = Manifest.load(out).plan
    assert plan.cache_free and plan.stages == (tuple(range(plan.encoder.depth)),)
    checker = (plan.num_tokens + 1) // 2  # the authors' reset, added for it
    assert plan.buckets == (6, checker, plan.num_tokens)
    stream = Pipeline.load(out).new_stream(policy=FixedKeep(6), reset="checkerboard")
    size = plan.encoder.img_size
    frames = list(moving_frames(20, size, seed=1, speed=3.0))  # 10 time steps
    results = [r for r in map(stream.step, frames) if r is not None]
    assert [r.k for r in results][:10] == [plan.num_tokens, *[6] * 7, checker, 6]
    assert results[-1].scores is not None and torch.isfinite(results[-1].scores).all()


def test_flops_count_the_cache_free_method_as_it_runs(capsys) -> None:
    """`rgtp flops --paper` on a ViViT counts the authors' method: block 0's qkv, attention
    and projection over all 1 + N tokens, its MLP and the later blocks on the 1 + K kept
    attending to each other; time step 0 dense, step R the checkerboard; K = N is dense."""
    from rgtp.cli import main
    from rgtp.families import get_config
    from rgtp.families.classification.flops import view_macs

    cfg = get_config("vivit-small")
    sp = cfg.spatial
    n, c, hidden, k = sp.num_tokens, sp.embed_dim, int(sp.embed_dim * sp.mlp_ratio), 26

    def step(kept: int) -> float:  # written out from the definition
        embed = n * c * 3 * sp.tubelet * sp.patch_size**2
        first = (1 + n) * 3 * c * c + 2 * (1 + n) * (1 + n) * c + (1 + n) * c * c
        first += (1 + kept) * 2 * c * hidden
        later = (sp.depth - 1) * (
            (1 + kept) * (4 * c * c + 2 * c * hidden) + 2 * (1 + kept) ** 2 * c
        )
        return embed + first + later

    board = (n + 1) // 2
    steps = [n if t == 0 else board if t % 8 == 0 else k for t in range(cfg.num_steps)]
    dense = view_macs(cfg)
    got = view_macs(cfg, k, 8, board, cache_free=True)
    assert got.patch_embed + got.spatial == pytest.approx(sum(map(step, steps)), rel=1e-12)
    assert got.temporal == dense.temporal
    assert view_macs(cfg, n, cache_free=True).total == pytest.approx(dense.total, rel=1e-12)
    assert main(["flops", "--model", "vivit-small", "--keep", "26", "--paper"]) == 0
    assert "authors' cache-free method" in capsys.readouterr().out
