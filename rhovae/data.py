"""MNIST / Fashion-MNIST as uint8 tensors on the training device, binarized the way likelihood papers do.

torchvision's dataset classes download, check and parse the IDX files; after that nothing per image
happens in Python. Splits: train = the first ``N - val_size`` official training images, val = the last
``val_size`` (10,000 by default), test = the official test set.

``binarize`` decides what the Bernoulli likelihood sees:

* ``dynamic`` (default): every training batch is a fresh Bernoulli draw with the grey level as probability.
* ``static``: one fixed Bernoulli draw (seeded by ``binarize_seed``) of all images, reused every epoch.
* ``none``: the grey levels themselves in [0, 1] as targets (the rho-VAE paper's code).

Validation and test images are always the same fixed draw (seeded by ``binarize_seed``, never by the run's
seed), so every posterior and every seed is scored on identical data; with ``none`` they stay continuous.
Images are stored as uint8 (binary ones as 0/255) and become float in [0, 1] one batch at a time.
"""

from __future__ import annotations

import contextlib

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torchvision import datasets

from .errors import ConfigError, DatasetError
from .registry import Registry

# torchvision dataset classes in MNIST's raw layout, by their config name (``dataset=mnist``).
DATASETS = Registry("dataset.name")
DATASETS.add("mnist", datasets.MNIST)
DATASETS.add("fmnist", datasets.FashionMNIST)
BINARIZE_MODES = ("dynamic", "static", "none")


@dataclass
class ImageData:
    """The three splits as uint8 tensors ``[N, n_pixels]`` on one device."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor  # colours the latent map of a 2-d model
    image_shape: tuple[int, int, int]
    dynamic: bool

    @property
    def n_pixels(self) -> int:
        return math.prod(self.image_shape)


def raw_folder(name: str, root: str | Path) -> Path:
    """Where torchvision keeps (and looks for) the raw IDX files of dataset ``name``."""
    return Path(root) / DATASETS[name].__name__ / "raw"


def expected_files(name: str) -> list[str]:
    return [Path(url).stem for url, _ in DATASETS[name].resources]


# IDX headers (the MNIST file format): two zero bytes, a type code, the number of dimensions, then each size as a
# big-endian int32. torchvision's parser asserts on a bad header; ``idx_problem`` says what is wrong instead.
IDX_UBYTE = 0x08
IDX_DIMS = {"images": 3, "labels": 1}


def idx_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable uint8 IDX file (missing, bad header, wrong size), or None when it looks fine."""
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] != IDX_UBYTE:
            return f"{path} is not an uint8 IDX file (its first bytes are {head.hex() or 'missing'}, expected 000008..)"
        ndim = head[3]
        expected_ndim = IDX_DIMS["labels" if "labels" in path.name else "images"]
        if ndim != expected_ndim:
            return f"{path} has {ndim} dimensions in its header, expected {expected_ndim}"
        dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        return f"{path} is truncated inside its header ({size} bytes)"
    shape = [int.from_bytes(dims[i:i + 4], "big") for i in range(0, 4 * ndim, 4)]
    expected = 4 + 4 * ndim + math.prod(shape)
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        return f"{path} is {state}: its header announces {' x '.join(map(str, shape))} bytes of data " \
               f"({expected:,} bytes in all), the file has {size:,}"
    return None


def _corrupt(name: str, root: Path, train: bool, err: Exception) -> DatasetError:
    """The error for files torchvision could not parse: the first bad file and why, or torchvision's own reason."""
    folder = raw_folder(name, root)
    prefix = "train" if train else "t10k"
    files = [folder / f for f in expected_files(name) if f.startswith(prefix)]
    problems = [p for p in map(idx_problem, files) if p]
    if problems:
        return DatasetError(f"could not read {name} data: {problems[0]}")
    reason = f"{type(err).__name__}: {' '.join(str(err).split()) or 'no message'}"
    return DatasetError(f"could not read {name} data in {folder}: {reason}")


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) where they exist and are empty."""
    for path in folders:
        with contextlib.suppress(OSError):
            path.rmdir()


def _load_split(name: str, root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    cls = DATASETS[name]
    folder = raw_folder(name, root)
    where = f"{name} data in {folder} (expected {', '.join(expected_files(name))})"
    try:
        ds = cls(str(root), train=train, download=False)
    except RuntimeError as err:
        if "Dataset not found" not in str(err):
            raise _corrupt(name, root, train, err) from err
        if not download:
            raise DatasetError(f"no {where}; dataset.download=false, so nothing was fetched") from err
        missing = [p for p in (folder, *folder.parents) if not p.exists()]  # what the download will create
        try:
            ds = cls(str(root), train=train, download=True)
        except Exception as dl_err:  # torchvision raises RuntimeError/URLError/OSError on a failed download
            _remove_empty(missing)  # a failed download leaves no empty folders behind
            reason = " ".join(str(dl_err).split()) or type(dl_err).__name__  # every mirror tried, on one line
            raise DatasetError(
                f"no {where}, and downloading failed ({reason}); put the files there or point "
                f"dataset.root (or $RHOVAE_DATA) at a folder that has them"
            ) from dl_err
    except (AssertionError, ValueError, IndexError) as err:
        raise _corrupt(name, root, train, err) from err
    images, labels = ds.data, ds.targets
    if images.dim() != 3 or images.dtype != torch.uint8 or len(images) != len(labels):
        raise DatasetError(f"could not read {where}: images {tuple(images.shape)} {images.dtype}, "
                           f"{len(labels)} labels; expected uint8 [N, H, W] with N labels")
    return images, labels


def _bernoulli_u8(images: torch.Tensor, seed: int) -> torch.Tensor:
    """One seeded Bernoulli draw of grey-level images, as uint8 0/255 (computed on the CPU, so every device agrees)."""
    gen = torch.Generator().manual_seed(seed)
    probs = images.float().div_(255.0)
    return torch.bernoulli(probs, generator=gen).to(torch.uint8).mul_(255)


def load_image_data(name: str, root: str | Path, *, binarize: str = "dynamic", val_size: int = 10_000,
                    binarize_seed: int = 0, download: bool = True, device: torch.device | str = "cpu") -> ImageData:
    """Load dataset ``name`` from ``root`` (downloading if allowed) into uint8 tensors on ``device``."""
    if name not in DATASETS:
        raise ConfigError(f"dataset.name={name!r} is not known; accepted: {', '.join(DATASETS)}")
    if binarize not in BINARIZE_MODES:
        raise ConfigError(f"dataset.binarize={binarize!r} is not known; accepted: {', '.join(BINARIZE_MODES)}")
    root = Path(root).expanduser()
    train_images, train_labels = _load_split(name, root, train=True, download=download)
    test_images, test_labels = _load_split(name, root, train=False, download=download)
    n_train = len(train_images)
    if not 0 < val_size < n_train:
        raise ConfigError(f"dataset.val_size={val_size} must be between 1 and {n_train - 1} "
                          f"(the {name} training set has {n_train} images)")
    image_shape = (1, *train_images.shape[1:])
    flat_train = train_images.reshape(n_train, -1)
    flat_test = test_images.reshape(len(test_images), -1)
    if binarize == "none":
        fixed_train, fixed_test = flat_train, flat_test
    else:
        fixed_train = _bernoulli_u8(flat_train, binarize_seed)
        fixed_test = _bernoulli_u8(flat_test, binarize_seed + 1)
    n_fit = n_train - val_size
    train = fixed_train[:n_fit] if binarize == "static" else flat_train[:n_fit]
    return ImageData(
        train=train.to(device),
        val=fixed_train[n_fit:].to(device),
        test=fixed_test.to(device),
        test_labels=test_labels.to(device),
        image_shape=image_shape,
        dynamic=binarize == "dynamic",
    )


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 grey levels (or 0/255) to float32 in [0, 1]."""
    return images.float().div_(255.0)


def train_batches(images: torch.Tensor, batch_size: int, *, order: torch.Tensor, binarize: torch.Generator | None,
                  start: int = 0, max_batches: int | None = None) -> Iterator[torch.Tensor]:
    """Float batches of ``images`` in the given ``order`` (a permutation), from batch ``start`` on.

    With ``binarize`` (a generator on the images' device) every batch is a fresh Bernoulli draw. The epoch
    is indexed, never copied image by image.
    """
    for i, idx in enumerate(order.split(batch_size)):
        if max_batches is not None and i >= max_batches:
            return
        if i < start:
            continue
        x = to_unit_float(images[idx])
        yield x if binarize is None else torch.bernoulli(x, generator=binarize)


def n_train_batches(n_images: int, batch_size: int, max_batches: int | None = None) -> int:
    n = math.ceil(n_images / batch_size)
    return n if max_batches is None else min(n, max_batches)


def eval_batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """The images in their stored order, as float batches."""
    for chunk in images.split(batch_size):
        yield to_unit_float(chunk)
