"""The SDF decoder: an MLP over [latent, x, y, z, t] with SIREN (sine) or ReLU activations.

Layout (METHOD.md section 2, ``ModelConfig``): hidden layer 0 takes the input [latent, xyzt];
a layer listed in ``latent_in`` takes [previous output, latent, xyzt] (the full input again);
with ``xyz_in_all`` every other hidden layer takes [previous output, xyzt]. Skip layers are
wider than ``hidden_dims`` says on their *input* side only, so every layer outputs its width.
For the reference preset this gives ~228 k parameters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from cellgen.config import ModelConfig

N_COORDS = 4  # x, y, z, t


class Sine(nn.Module):
    """sin(omega * x), always in float32: under bf16 autocast omega * x (|x| ~ 2, omega 30) would
    carry phase errors of ~0.2 rad."""

    def __init__(self, omega: float):
        super().__init__()
        self.omega = float(omega)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.omega * x.float())

    def extra_repr(self) -> str:
        return f"omega={self.omega}"


def siren_init_(linear: nn.Linear, omega: float, first: bool) -> None:
    """SIREN initialisation of the weights, n = fan-in: the first layer U(-1/n, 1/n), the
    others U(-sqrt(6/n)/omega, +sqrt(6/n)/omega), so pre-activations stay ~U(-sqrt 6, sqrt 6)."""
    n = linear.in_features
    bound = 1.0 / n if first else math.sqrt(6.0 / n) / omega
    with torch.no_grad():
        linear.weight.uniform_(-bound, bound)


class HiddenLayer(nn.Module):
    """Linear -> (LayerNorm) -> activation -> (dropout); optionally weight-normalised."""

    def __init__(self, in_dim: int, out_dim: int, cfg: ModelConfig, index: int):
        super().__init__()
        linear = nn.Linear(in_dim, out_dim)
        if cfg.activation == "sine":
            first = index == 0
            omega = (cfg.omega_first or cfg.omega) if first else cfg.omega
            siren_init_(linear, omega, first)
            self.activation: nn.Module = Sine(omega)
        else:
            self.activation = nn.ReLU()  # PyTorch's default (Kaiming-uniform) init
        self.linear = weight_norm(linear) if index in cfg.weight_norm else linear
        self.norm = nn.LayerNorm(out_dim) if index in cfg.layer_norm else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout_prob) if index in cfg.dropout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.linear(x))

    def activate(self, pre: Tensor) -> Tensor:
        """Everything after the linear map."""
        return self.dropout(self.activation(self.norm(pre)))


class SdfDecoder(nn.Module):
    """f(latent, x, y, z, t) -> signed distance. ``forward(latent (N, L), xyzt (N, 4)) -> (N,)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.latent_dim = cfg.latent_dim
        self.latent_in = frozenset(cfg.latent_in)
        self.xyz_in_all = cfg.xyz_in_all
        self.latent_dropout = cfg.dropout_prob if cfg.latent_dropout else 0.0
        self.tanh_output = cfg.tanh_output
        input_dim = cfg.latent_dim + N_COORDS
        layers = []
        previous = input_dim
        for index, width in enumerate(cfg.hidden_dims):
            layers.append(HiddenLayer(previous + self.extra_inputs(index), width, cfg, index))
            previous = width
        self.layers = nn.ModuleList(layers)
        self.output = nn.Linear(previous, 1)
        if cfg.activation == "sine":
            siren_init_(self.output, cfg.omega, first=False)

    def extra_inputs(self, index: int) -> int:
        """How many inputs hidden layer ``index`` receives besides the previous layer's output."""
        if index in self.latent_in:
            return self.latent_dim + N_COORDS
        if index > 0 and self.xyz_in_all:
            return N_COORDS
        return 0

    def forward(self, latent: Tensor, xyzt: Tensor) -> Tensor:
        full = torch.cat([latent, xyzt], dim=1)
        if self.latent_dropout > 0:
            x = torch.cat([nn.functional.dropout(latent, self.latent_dropout, self.training), xyzt], 1)
        else:
            x = full
        for index, layer in enumerate(self.layers):
            if index in self.latent_in:
                x = torch.cat([x, full], dim=1)
            elif index > 0 and self.xyz_in_all:
                x = torch.cat([x, xyzt], dim=1)
            x = layer(x)
        return self._head(x)

    def forward_indexed(self, codes: Tensor, sequence: Tensor | None, xyzt: Tensor) -> Tensor:
        """``forward(codes[sequence], xyzt)`` computed faster: wherever a layer takes the latent
        code, its share of the linear map (``codes @ W_latent.T``) is computed once per sequence
        (S rows) and gathered, instead of once per point (N rows); concatenations become sums.
        For the reference net this removes about a third of the multiply-adds.
        ``sequence=None``: every point uses the one code ``codes`` (1, L) (broadcast, no gather)."""
        if self.latent_dropout > 0 and self.training:  # dropout is per point: no sharing
            latent = codes.expand(xyzt.shape[0], -1) if sequence is None else codes[sequence]
            return self.forward(latent, xyzt)
        x = None
        for index, layer in enumerate(self.layers):
            weight, bias = layer.linear.weight, layer.linear.bias
            col = 0 if x is None else x.shape[1]
            pre = bias if x is None else nn.functional.linear(x, weight[:, :col], bias)
            if index == 0 or index in self.latent_in:
                latent_part = nn.functional.linear(codes, weight[:, col : col + self.latent_dim])
                pre = pre + (latent_part if sequence is None else latent_part[sequence])
                col += self.latent_dim
            if col < weight.shape[1]:  # the coordinates
                pre = torch.addmm(pre, xyzt, weight[:, col:].t())
            x = layer.activate(pre)
        return self._head(x)

    def _head(self, x: Tensor) -> Tensor:
        out = self.output(x).squeeze(-1)
        return torch.tanh(out) if self.tanh_output else out


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
