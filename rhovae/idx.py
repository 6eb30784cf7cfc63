"""Writes MNIST-format (IDX) files of synthetic digits, for tests and benchmarks that must not depend on the
real datasets: torchvision then loads them through its ordinary code path."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

FOLDERS = {"mnist": "MNIST", "fmnist": "FashionMNIST"}


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: magic (0, 0, 0x08 = uint8, ndim), big-endian int32 sizes, then the raw bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def fake_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey-level 28x28 images of a bright rectangle whose position depends on the label, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.float64)
    for i, label in enumerate(labels):
        r, c = 4 + (label // 5) * 10, 3 + (label % 5) * 4
        images[i, r:r + 10, c:c + 6] += rng.uniform(150, 215)
    return np.clip(images, 0, 255).astype(np.uint8), labels


def write_dataset(root: Path, name: str, n_train: int = 240, n_test: int = 80, seed: int = 0) -> Path:
    """Write ``<root>/<MNIST|FashionMNIST>/raw/*-ubyte`` and return the raw folder."""
    raw = root / FOLDERS[name] / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = fake_digits(n, s)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return raw
