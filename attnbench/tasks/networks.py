"""The colorization network of the paper (Fig. 3), with its attention layer swappable.

Why so small: the paper isolates the attention layer, so the network is one 3x3 convolution
(3 -> 16 channels) shared by both frames, the attention, one 3x3 convolution (16 -> 3) and a
residual connection to the grey input, "so that the attention layer only has to provide colour
information". Queries are the features of the grey frame A (replicated to RGB), keys and values
the features of the colour reference B: the shared embedding must learn to make grey and colour
patches of the same content similar, which a mechanism that is not differentiable with respect
to q and k (PSAL-1) cannot do (paper Table 4).
"""
from __future__ import annotations

import torch
from torch import nn

from ..interface import AttentionMechanism


def grey3(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> luminance (ITU-R 601, as skimage.color.rgb2gray) replicated to 3 channels."""
    weights = torch.tensor([0.2125, 0.7154, 0.0721], dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb * weights).sum(1, keepdim=True).expand(-1, 3, -1, -1)


class ColorizationNet(nn.Module):
    """conv3x3 (3 -> features) -> attention(q = f(grey A), k = v = f(B)) -> conv3x3 (-> 3) + grey A."""

    def __init__(self, attention: "AttentionMechanism | nn.Module", features: int = 16):
        super().__init__()
        self.embed = nn.Conv2d(3, features, 3, padding=1, padding_mode="replicate")
        self.attention = attention
        self.project = nn.Conv2d(features, 3, 3, padding=1, padding_mode="replicate")
        self.features = features

    def forward(self, grey: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``grey`` (B, 3, H, W) the grey frame, ``reference`` (B, 3, Hr, Wr) the colour frame."""
        q, kv = self.attention_inputs(grey, reference)
        wrt = self.attention.differentiable_wrt
        # a layer that cannot back-propagate into q or k (PSAL-1) gets them detached: its embedding
        # then learns only through the values, which is the paper's point about PSAL-1
        k = kv if "k" in wrt else kv.detach()
        v = kv if "v" in wrt else kv.detach()
        return grey + self.project(self.attention(q if "q" in wrt else q.detach(), k, v))

    def attention_inputs(self, grey: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The feature maps the attention layer sees (used to measure the layer alone)."""
        return self.embed(grey), self.embed(reference)

    def swap_attention(self, attention: AttentionMechanism) -> "ColorizationNet":
        """Replace the attention layer, keeping the trained convolutions (test-time substitution)."""
        self.attention = attention
        return self

    def convolution_state(self) -> dict[str, torch.Tensor]:
        """The trained weights that do not belong to the attention layer."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("attention.")}


class NoAttention(nn.Module):
    """Baseline ``no-attention``: the attention output replaced by zeros (same convolutions).

    The network can then only add a learned constant colour to the grey frame: what a useless
    attention layer leaves. Not an :class:`AttentionMechanism` (it has no cost worth measuring).
    """

    differentiable_wrt = ("q", "k", "v")

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(q[:, : v.shape[1]])

    def params(self) -> dict[str, object]:
        return {}


class SamePosition(nn.Module):
    """Baseline ``zero-motion``: each query takes the value at its own position in the reference.

    An attention that assumes no motion between the frames; with the same trained convolutions
    it gives the colour at the same position in the reference frame.
    """

    differentiable_wrt = ("q", "k", "v")

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if v.shape[2:] != q.shape[2:]:
            v = nn.functional.interpolate(v, size=q.shape[2:], mode="bilinear", align_corners=False)
        return v

    def params(self) -> dict[str, object]:
        return {}


#: the baseline layers a colorization record is compared with, by record name
BASELINES: dict[str, type[nn.Module]] = {"no-attention": NoAttention, "zero-motion": SamePosition}
