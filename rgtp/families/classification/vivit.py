"""The ViViT factorised encoder: a spatial ViT per time step, a temporal transformer over
the per-step CLS features, a linear classifier.

Parameter names of the spatial encoder follow timm's `VisionTransformer` (`cls_token`,
`pos_embed`, `patch_embed.proj`, `blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`,
`norm`), so `rgtp.families.classification.weights` maps timm ViT checkpoints onto it one to
one (the patch kernel inflated to a tubelet). The forward is split where the pruned runtime
needs it: `embed` (raw patch embeddings z_0 for tracking, and the tokens), the spatial `blocks`,
`cls_features`, and `temporal_head` (CLS sequence -> logits).

Shapes: B batch, t frames per tubelet, s time steps, S input side, N = (S / patch)² patch
tokens, C width, h heads.
"""

from __future__ import annotations

import torch
from torch import nn

from rgtp.families.classification.config import SpatialConfig, TemporalConfig, ViViTConfig
from rgtp.models import vitdet
from rgtp.models.vit_ops import attend


class TubeletEmbed(nn.Module):
    """Non-overlapping tubelet projection: (B, 3, t * s, S, S) -> (B, s, N, C).

    A Conv3d whose kernel and stride are (t, patch, patch); with t = 1 it is ViT's patch
    embedding.
    """

    def __init__(self, tubelet: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        size = (tubelet, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=size, stride=size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1).flatten(2, 3)


class Attention(nn.Module):
    """Multi-head self-attention over a token sequence (no position bias: every block is
    global and positions enter through the absolute embedding)."""

    # The detector's head split is the same (..., M, C) -> (..., h, M, d) reshape.
    split_heads = vitdet.Attention.split_heads

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    @staticmethod
    def bias(q: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> None:
        """No position bias (the pruned stage asks every attention for one)."""
        return None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, M, C) -> output (B, M, C) and attention probabilities (B, h, M, M).

        The probabilities are what rollout reads (rows of the CLS query for s_L).
        """
        b, m, c = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        out, probs = attend(self.split_heads(q), self.split_heads(k), self.split_heads(v), None)
        return self.proj(out.transpose(1, 2).reshape(b, m, c)), probs


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(x))."""

    window_size = 0  # always global: the pruned stage's test for windowed blocks reads this

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, norm_eps: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = vitdet.Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, M, C) -> (B, M, C) and the block's attention probabilities (B, h, M, M)."""
        out, probs = self.attn(self.norm1(x))
        x = x + out
        return x + self.mlp(self.norm2(x)), probs


class SpatialEncoder(nn.Module):
    """The spatial ViT: one time step (B, 3, t, S, S) normalised pixels -> tokens.

    Token 0 is the CLS token, tokens 1..N the patches in raster order; `pos_embed` (1, 1 + N, C)
    covers both, in timm's layout, at this model's grid (checkpoints trained at another grid
    are resampled when loaded).
    """

    def __init__(self, cfg: SpatialConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.embed_dim
        self.patch_embed = TubeletEmbed(cfg.tubelet, cfg.patch_size, cfg.in_chans, c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.num_tokens, c))
        self.blocks = nn.ModuleList(
            Block(c, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.norm_eps)
            for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(c, eps=cfg.norm_eps)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        vitdet.init_vit_weights(self)

    def embed(self, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step (B, 3, t, S, S) -> z_0 (B, N, C) and tokens (B, 1 + N, C).

        z_0, the tubelet embeddings before the position embedding, is what token tracking
        matches on; the tokens are [CLS, z_0] plus the position embedding.
        """
        cfg = self.cfg
        want = (cfg.in_chans, cfg.tubelet, cfg.img_size, cfg.img_size)
        if tuple(step.shape[1:]) != want:
            raise ValueError(
                f"a time step is {want} (channels, frames, height, width), "
                f"got {tuple(step.shape[1:])}"
            )
        patches = self.patch_embed(step)[:, 0]
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        return patches, torch.cat([cls, patches], dim=1) + self.pos_embed

    def cls_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block (B, 1 + N, C) -> the normalised CLS feature (B, C)."""
        return self.norm(tokens[:, 0])

    def forward(self, step: torch.Tensor) -> torch.Tensor:
        """One time step (B, 3, t, S, S) -> its CLS feature (B, C)."""
        _, x = self.embed(step)
        for block in self.blocks:
            x, _ = block(x)
        return self.cls_features(x)


class TemporalHead(nn.Module):
    """Temporal transformer and classifier: per-step CLS features (B, s, C) -> logits (B, L).

    A CLS token of its own is prepended, a learned position embedding (1, 1 + s, C) added; after
    the blocks the normalised CLS output is classified.
    """

    def __init__(
        self, cfg: TemporalConfig, num_steps: int, dim: int, num_classes: int, norm_eps: float
    ) -> None:
        super().__init__()
        self.num_steps = num_steps
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_steps, dim))
        self.blocks = nn.ModuleList(
            Block(dim, cfg.num_heads, cfg.mlp_ratio, True, norm_eps) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        vitdet.init_vit_weights(self)

    def forward(self, cls_sequence: torch.Tensor) -> torch.Tensor:
        if cls_sequence.shape[1] != self.num_steps:
            raise ValueError(
                f"the temporal transformer reads {self.num_steps} time steps, "
                f"got {cls_sequence.shape[1]}"
            )
        cls = self.cls_token.expand(cls_sequence.shape[0], -1, -1)
        x = torch.cat([cls, cls_sequence], dim=1) + self.pos_embed
        for block in self.blocks:
            x, _ = block(x)
        return self.head(self.norm(x[:, 0]))


class ViViT(nn.Module):
    """ViViT factorised encoder: clip (B, 3, T, S, S) RGB in [0, 255] -> logits (B, L).

    T = num_frames = s time steps of t frames. The pruned runtime calls the pieces one time
    step at a time: `embed` -> `spatial.blocks` -> `cls_features`, and `temporal_head` on the
    sequence of CLS features.
    """

    def __init__(self, cfg: ViViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        sp = cfg.spatial
        self.spatial = SpatialEncoder(sp)
        self.temporal = TemporalHead(
            cfg.temporal, cfg.num_steps, sp.embed_dim, cfg.num_classes, sp.norm_eps
        )
        shape = (1, 3, 1, 1, 1)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(shape), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(shape), False)

    @property
    def blocks(self) -> nn.ModuleList:
        """The spatial encoder's blocks, the ones pruning runs on."""
        return self.spatial.blocks

    def embed(self, step_pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step (B, 3, t, S, S) RGB in [0, 255] -> z_0 (B, N, C), tokens (B, 1 + N, C)."""
        return self.spatial.embed((step_pixels - self.pixel_mean) / self.pixel_std)

    def cls_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Spatial tokens after the last block (B, 1 + N, C) -> CLS feature (B, C)."""
        return self.spatial.cls_features(tokens)

    def temporal_head(self, cls_sequence: torch.Tensor) -> torch.Tensor:
        """CLS features of every time step (B, s, C) -> class logits (B, L)."""
        return self.temporal(cls_sequence)

    def step_features(self, step_pixels: torch.Tensor) -> torch.Tensor:
        """The dense spatial encoder on one time step: (B, 3, t, S, S) RGB -> CLS (B, C)."""
        _, x = self.embed(step_pixels)
        for block in self.spatial.blocks:
            x, _ = block(x)
        return self.cls_features(x)

    def clip_features(self, clip: torch.Tensor) -> torch.Tensor:
        """Clip (B, 3, T, S, S) RGB in [0, 255] -> per-step CLS features (B, s, C).

        The time steps are folded into the batch, so the spatial encoder runs once.
        """
        b, c, frames, h, w = clip.shape
        t, s = self.cfg.spatial.tubelet, self.cfg.num_steps
        if frames != t * s:
            raise ValueError(f"a clip is {t * s} frames, got {frames}")
        steps = clip.view(b, c, s, t, h, w).transpose(1, 2).reshape(b * s, c, t, h, w)
        return self.step_features(steps).view(b, s, -1)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.temporal_head(self.clip_features(clip))
