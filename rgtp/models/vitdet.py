"""The dense ViTDet-style backbone: patch embedding, absolute and relative position
embeddings, windowed and global attention blocks.

Parameter names follow timm's `samvit_*` models, so their state dicts load with no renaming;
`rgtp.families.detection.checkpoints` maps detectron2 and SAM names onto these.
"""

from __future__ import annotations

import torch
from torch import nn

from rgtp.models.config import BackboneConfig
from rgtp.models.vit_ops import (
    attend,
    attention_output,
    grid_coords,
    rel_pos_logits,
    resize_abs_pos,
    window_partition,
    window_unpartition,
)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, H/p, W/p, C)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention over a square token grid with decomposed rel-pos.

    `side` is the grid side the attention sees: the window size for windowed blocks, the
    token grid for global blocks. It sizes the relative-position tables (2 * side - 1 rows).
    `windowed` attention runs as one fused kernel (nothing reads its probabilities); global
    attention spells out its probabilities as the pruned stages do (`vit_ops.attend`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool,
        use_rel_pos: bool,
        side: int,
        windowed: bool = False,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.side = side
        self.windowed = windowed
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            head_dim = dim // num_heads
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * side - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * side - 1, head_dim))
        grid_y, grid_x = grid_coords(side)
        self.register_buffer("grid_y", grid_y, persistent=False)
        self.register_buffer("grid_x", grid_x, persistent=False)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(..., M, C) -> (..., h, M, d)."""
        *lead, m, c = x.shape
        x = x.view(*lead, m, self.num_heads, c // self.num_heads)
        return x.transpose(-3, -2)

    def bias(self, q: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor | None:
        """Rel-pos logits for queries q (B, h, M, d) at grid positions (ys, xs) (M,) of this
        attention's grid."""
        if not self.use_rel_pos:
            return None
        return rel_pos_logits(q, ys, xs, self.rel_pos_h, self.rel_pos_w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, side, side, C) -> (B, side, side, C)."""
        b, h, w, c = x.shape
        q, k, v = self.qkv(x.reshape(b, h * w, c)).chunk(3, dim=-1)
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
        bias = self.bias(q, self.grid_y, self.grid_x)
        if self.windowed:  # no rollout reads a windowed block: one fused kernel
            out = attention_output(q, k, v, bias)
        else:  # the same arithmetic as the pruned global blocks, so K = N equals dense
            out, _ = attend(q, k, v, bias)
        out = out.transpose(1, 2).reshape(b, h, w, c)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block; `window_size` 0 means global attention."""

    def __init__(self, cfg: BackboneConfig, index: int) -> None:
        super().__init__()
        self.window_size = 0 if cfg.is_global(index) else cfg.window_size
        side = self.window_size or cfg.grid
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(
            cfg.embed_dim, cfg.num_heads, cfg.qkv_bias, cfg.use_rel_pos, side, self.window_size > 0
        )
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size:
            hw = (x.shape[1], x.shape[2])
            # Padding is applied to the normalised tokens, so padded keys/values are the
            # qkv bias: the pruned path reproduces exactly that (`stages.PrunedStage._windowed`).
            x, padded_hw = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(x), self.window_size, padded_hw, hw)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


def init_vit_weights(module: nn.Module) -> None:
    """Truncated-normal linear weights, zero biases, unit layer norms (timm's ViT init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ViTDetBackbone(nn.Module):
    """Plain ViT trunk of ViTDet / SAM: (B, 3, S, S) normalised pixels -> (B, H, W, C)."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.pos_embed = nn.Parameter(
            torch.zeros(1, cfg.pretrain_grid, cfg.pretrain_grid, cfg.embed_dim)
        )
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.depth))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        init_vit_weights(self)

    def abs_pos(self) -> torch.Tensor:
        """The absolute position embedding at the token grid: (1, H, W, C)."""
        return resize_abs_pos(self.pos_embed, self.cfg.grid)

    def embed(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised pixels (B, 3, S, S) -> raw patch embeddings z_0 and tokens, (B, H, W, C).

        z_0 (before the position embedding) is what token tracking matches on.
        """
        if pixels.shape[-2:] != (self.cfg.img_size, self.cfg.img_size):
            raise ValueError(
                f"expected {self.cfg.img_size}x{self.cfg.img_size} input, "
                f"got {tuple(pixels.shape[-2:])}"
            )
        patches = self.patch_embed(pixels)
        return patches, patches + self.abs_pos()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        _, x = self.embed(pixels)
        for block in self.blocks:
            x = block(x)
        return x
