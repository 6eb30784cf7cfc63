"""Encoder trunks and decoders for 28x28 greyscale images: an MLP pair and a small convolutional pair.

Encoders map flat images ``[..., 784]`` to features ``[..., F]`` (``encoder.out_features = F``); the
posterior's own heads turn those features into q(z|x). Decoders map ``[..., d]`` latents to Bernoulli
logits ``[..., 784]``. Leading dimensions (importance samples, batch) pass through untouched.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .registry import Registry, check_option

# Encoder/decoder pairs register here (``@NETWORKS.register("name")``); their keyword options are config keys.
NETWORKS = Registry("networks")
ACTIVATIONS = Registry("networks.activation")
for _name, _module in {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "tanh": nn.Tanh,
                       "softplus": nn.Softplus}.items():
    ACTIVATIONS.add(_name, _module)


def _activation(name: str) -> nn.Module:
    return ACTIVATIONS.build(name)


def _check_sizes(key: str, sizes: Sequence[int]) -> None:
    check_option(len(sizes) > 0 and all(isinstance(n, int) and n >= 1 for n in sizes), key, list(sizes),
                 "a non-empty list of integers >= 1")


def _mlp(sizes: Sequence[int], activation: str, last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if last_activation or i < len(sizes) - 2:
            layers.append(_activation(activation))
    return nn.Sequential(*layers)


class FlatBatch(nn.Module):
    """Apply ``net`` to the last ``n_dims`` dimensions, flattening any leading ones into one batch."""

    def __init__(self, net: nn.Module, in_shape: Sequence[int], out_shape: Sequence[int]):
        super().__init__()
        self.net = net
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[: x.dim() - 1]
        y = self.net(x.reshape(-1, *self.in_shape))
        return y.reshape(*lead, *self.out_shape)


@NETWORKS.register("mlp")
def mlp_pair(image_shape: Sequence[int], latent_dim: int, *, hidden: Sequence[int] = (512, 512),
             activation: str = "relu") -> tuple[nn.Module, nn.Module]:
    """MLP encoder 784-h1-..-hk (features hk) and mirrored MLP decoder d-hk-..-h1-784."""
    n_pixels = math.prod(image_shape)
    hidden = list(hidden)
    _check_sizes("networks.hidden", hidden)
    encoder = _mlp([n_pixels, *hidden], activation, last_activation=True)
    encoder.out_features = hidden[-1]
    decoder = _mlp([latent_dim, *reversed(hidden), n_pixels], activation, last_activation=False)
    return encoder, decoder


@NETWORKS.register("conv")
def conv_pair(image_shape: Sequence[int], latent_dim: int, *, channels: Sequence[int] = (32, 64),
              hidden: int = 256, activation: str = "relu") -> tuple[nn.Module, nn.Module]:
    """Strided 4x4 convolutions halving 28 -> 14 -> 7, a dense layer of ``hidden`` features; the decoder mirrors it."""
    c_in, height, width = image_shape
    n_pixels = c_in * height * width
    channels = list(channels)
    _check_sizes("networks.channels", channels)
    check_option(isinstance(hidden, int) and hidden >= 1, "networks.hidden", hidden, "an integer >= 1")
    side = height // 2 ** len(channels)
    check_option(side * 2 ** len(channels) == height and height == width, "networks.channels", channels,
                 f"n layers with the image side a multiple of 2**n (images here: {height}x{width}; square only)")
    flat = channels[-1] * side * side

    enc_layers: list[nn.Module] = []
    for c_prev, c in zip([c_in, *channels[:-1]], channels):
        enc_layers += [nn.Conv2d(c_prev, c, 4, stride=2, padding=1), _activation(activation)]
    enc_layers += [nn.Flatten(), nn.Linear(flat, hidden), _activation(activation)]
    encoder = FlatBatch(nn.Sequential(*enc_layers), image_shape, (hidden,))
    encoder.out_features = hidden

    dec_layers: list[nn.Module] = [
        nn.Linear(latent_dim, hidden), _activation(activation),
        nn.Linear(hidden, flat), _activation(activation),
        nn.Unflatten(1, (channels[-1], side, side)),
    ]
    reversed_channels = list(reversed(channels))
    for i, (c, c_next) in enumerate(zip(reversed_channels, [*reversed_channels[1:], c_in])):
        dec_layers.append(nn.ConvTranspose2d(c, c_next, 4, stride=2, padding=1))
        if i < len(channels) - 1:
            dec_layers.append(_activation(activation))
    dec_layers.append(nn.Flatten())
    decoder = FlatBatch(nn.Sequential(*dec_layers), (latent_dim,), (n_pixels,))
    return encoder, decoder


def build_networks(name: str, image_shape: Sequence[int], latent_dim: int, **options) -> tuple[nn.Module, nn.Module]:
    """The (encoder, decoder) pair called ``name`` (a key of ``NETWORKS``)."""
    return NETWORKS.build(name, image_shape, latent_dim, **options)
