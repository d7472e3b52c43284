"""CIFAR-10, offline: the canonical pickled batches or the JPEG q75 copy, and augmentation.

Nothing is downloaded. :func:`load_cifar10` (also ``datasets.load_dataset("cifar10")``)
looks in ``data_dir`` (default: the folder named by the environment variable
``RERAM_EMU_DATA``; with neither, the error says where to put the files) for, in this order:

1. the canonical ``cifar-10-batches-py`` folder (``data_batch_1`` ... ``data_batch_5``,
   ``test_batch``): ``data_dir`` itself or ``data_dir/cifar-10-batches-py/``. Read exactly
   (lossless); ``Dataset.name`` is ``"cifar10"``. The pickles are read by an unpickler that
   only admits numpy arrays, so a planted pickle cannot run code.
2. the JPEG copy (:data:`JPEG_TARBALL` or the extracted :data:`JPEG_FOLDER`, layout
   ``cifar10-jpeg/{train,test}/{class}/NNNN.jpg``, classes in :data:`CLASSES` order).
   Re-encoded at JPEG quality 75, so it is not the published data set:
   ``Dataset.name`` is :data:`JPEG_LABEL`, ``"CIFAR-10 (JPEG q75 copy)"``, and every
   result on it must carry that label. Needs Pillow (``pip install reram_emu[cifar]``).
   Images are ordered by class, then file name (shuffle before mini-batching). The decoded
   uint8 arrays are cached (:func:`default_cache_dir`), written atomically and keyed by the
   source's size, mtime and SHA-256; a changed source is decoded again and a damaged cache
   file (checked against its own SHA-256) is rebuilt, with a warning.

``strict=True`` (default) insists on the complete set: 50,000 train / 10,000 test images,
5,000 / 1,000 per class. ``strict=False`` loads any consistent subset (test fixtures).
Images are float (N, 32, 32, 3) in [0, 1], NHWC; ``flatten=True`` gives (N, 3072) in HWC
order (not the pickles' CHW order). :func:`augment` is the standard random crop and flip.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
import tempfile
import warnings
import zlib
from functools import partial
from pathlib import Path, PurePosixPath

import jax
import jax.numpy as jnp
import numpy as np

from .cache import default_cache_dir
from .datasets import (Dataset, DatasetMismatchError, DatasetNotFoundError, DatasetTypeError,
                       _check_arguments, _check_data_dir, _stratified_split)

__all__ = ["CLASSES", "JPEG_LABEL", "CIFARFormatError", "load_cifar10", "find_cifar10",
           "read_batch", "default_cache_dir", "augment"]

CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
FULL_SIZES = (50000, 10000)
PER_CLASS = (5000, 1000)
IMAGE_SHAPE = (32, 32, 3)
CANONICAL_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
JPEG_TARBALL = "cifar10-jpeg.tar.gz"
JPEG_FOLDER = "cifar10-jpeg"
JPEG_LABEL = "CIFAR-10 (JPEG q75 copy)"
SPLITS = ("train", "test")
#: The environment variable naming the data folder when ``data_dir`` is None.
DATA_ENV = "RERAM_EMU_DATA"
_CACHE_FORMAT = 1
_SOURCES = ("auto", "pickle", "jpeg")


class CIFARFormatError(ValueError):
    """A CIFAR-10 file is truncated, corrupt or has the wrong layout (the message names it)."""


# --------------------------------------------------------------------------- lookup


def _where_to_put() -> str:
    return (f"put the canonical folder {CANONICAL_FOLDER}/ (data_batch_1..5, test_batch) or "
            f"the JPEG copy {JPEG_TARBALL} (or its extracted {JPEG_FOLDER}/) in a folder and "
            f"pass data_dir=... (the folder holding them, or {CANONICAL_FOLDER}/ itself)")


def find_cifar10(data_dir=None, source: str = "auto") -> tuple[str, Path]:
    """Locate CIFAR-10: ``("pickle", folder)``, ``("jpeg_tar", file)`` or ``("jpeg_dir", folder)``.

    Looks, in the folder (``data_dir``, else ``$RERAM_EMU_DATA``), at the folder itself
    and ``cifar-10-batches-py/`` (canonical), then ``cifar10-jpeg.tar.gz`` and
    ``cifar10-jpeg/``; ``source="pickle"`` or ``"jpeg"`` restricts the search. Raises
    :class:`DatasetNotFoundError` listing every place looked at and where to put the files.
    """
    if source not in _SOURCES:
        raise ValueError(f"source must be one of {', '.join(_SOURCES)}, got {source!r}")
    directory = _check_data_dir(data_dir)
    if directory is None:
        if not os.environ.get(DATA_ENV):
            raise DatasetNotFoundError(
                f"CIFAR-10: no data_dir given and ${DATA_ENV} is not set. To use it, "
                f"{_where_to_put()}, or set {DATA_ENV} to that folder. Nothing is downloaded.")
        directory = Path(os.environ[DATA_ENV]).expanduser()
    folders = [directory]
    looked = []
    for d in folders:
        candidates = []
        if source != "jpeg":
            candidates += [("pickle", d), ("pickle", d / CANONICAL_FOLDER)]
        if source != "pickle":
            candidates += [("jpeg_tar", d / JPEG_TARBALL), ("jpeg_dir", d / JPEG_FOLDER)]
        for kind, path in candidates:
            looked.append(str(path) + ("" if kind == "jpeg_tar" else "/"))
            if kind == "pickle" and any((path / n).is_file()
                                        for n in TRAIN_BATCHES + (TEST_BATCH,)):
                return kind, path
            if (kind == "jpeg_tar" and path.is_file()) or (kind == "jpeg_dir" and path.is_dir()):
                return kind, path
    problem = ""
    if directory is not None and not directory.is_dir():
        what = "is not a folder" if directory.exists() else "does not exist"
        problem = f" (data_dir={str(data_dir)!r} {what})"
    raise DatasetNotFoundError(f"CIFAR-10 not found{problem}: looked in {', '.join(looked)}. "
                               f"To use it, {_where_to_put()}. Nothing is downloaded.")


# --------------------------------------------------------------------------- canonical pickles

_NP_CORE = "numpy._core" if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else "numpy.core"
_ALLOWED_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                    ("core.multiarray", "_reconstruct"), ("core.multiarray", "scalar"),
                    ("core.numeric", "_frombuffer")}


class _ArrayUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR batch holds (dicts, lists, numpy arrays): no code runs."""

    def find_class(self, module, name):
        short = module.replace("numpy._core.", "core.").replace("numpy.core.", "core.")
        if (short, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if short.startswith("core."):
            module = _NP_CORE + short[4:]
        return super().find_class(module, name)


def read_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """One canonical batch file -> (uint8 images (n, 32, 32, 3) HWC, int32 labels (n,))."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise CIFARFormatError(f"{path}: cannot read ({e})") from e
    except Exception as e:  # truncated or corrupt pickles raise many kinds of error
        raise CIFARFormatError(f"{path}: not a readable CIFAR-10 batch pickle, truncated or "
                               f"corrupt ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict):
        raise CIFARFormatError(f"{path}: expected a dict, got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "fine_labels" in batch:
        raise DatasetMismatchError(f"{path} is a CIFAR-100 batch (it has fine_labels), "
                                   f"not CIFAR-10")
    if "data" not in batch or "labels" not in batch:
        raise CIFARFormatError(f"{path}: no data/labels entries (keys: {sorted(batch)})")
    data, labels = batch["data"], np.asarray(batch["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        what = (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise CIFARFormatError(f"{path}: data must be uint8 (n, 3072) (32x32 RGB, CHW rows), "
                               f"got {what}")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype,
                                                                         np.integer):
        raise CIFARFormatError(f"{path}: {len(data)} images but labels of shape "
                               f"{labels.shape} ({labels.dtype}); expected {len(data)} ints")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise CIFARFormatError(f"{path}: labels outside 0..9 ({labels.min()}..{labels.max()})")
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels.astype(np.int32)


def _read_pickles(folder: Path, strict: bool):
    train_names = [n for n in TRAIN_BATCHES if (folder / n).is_file()]
    missing = [n for n in TRAIN_BATCHES + (TEST_BATCH,) if not (folder / n).is_file()]
    if TEST_BATCH in missing or not train_names or (strict and missing):
        hint = (" (strict=False loads the batches that are there)"
                if strict and train_names and TEST_BATCH not in missing else "")
        raise DatasetNotFoundError(f"{folder} lacks {', '.join(missing)}{hint}. To use "
                                   f"CIFAR-10, {_where_to_put()}.")
    train = [read_batch(folder / n) for n in train_names]
    x_test, y_test = read_batch(folder / TEST_BATCH)
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
            x_test, y_test)


# --------------------------------------------------------------------------- JPEG copy


def _pillow():
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("Reading the CIFAR-10 JPEG copy needs Pillow: "
                          "pip install reram_emu[cifar]") from e
    return Image


def _tar_members(path: Path) -> dict:
    """{(split, class index): [(name for errors, jpeg bytes)]} from the tarball."""
    members = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                parts = [p for p in PurePosixPath(m.name).parts if p != "."]
                if len(parts) < 3 or parts[0] != JPEG_FOLDER or parts[1] not in SPLITS:
                    continue
                if parts[2] not in CLASSES:
                    if len(parts) == 3 and not m.isdir():
                        continue  # a stray file beside the class folders
                    raise CIFARFormatError(f"{path}: unexpected folder {m.name!r} (class "
                                           f"folders must be {', '.join(CLASSES)})")
                if len(parts) == 4 and m.isfile() and parts[3].lower().endswith(".jpg"):
                    key = (parts[1], CLASSES.index(parts[2]))
                    members.setdefault(key, []).append((f"{path}:{m.name}",
                                                        tar.extractfile(m).read()))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise CIFARFormatError(f"{path}: truncated or corrupt tarball ({e})") from e
    return members


def _dir_members(folder: Path) -> dict:
    members = {}
    for split in SPLITS:
        if (folder / split).is_dir():
            extra = sorted(p.name for p in (folder / split).iterdir()
                           if p.is_dir() and p.name not in CLASSES)
            if extra:
                raise CIFARFormatError(f"{folder / split}: unexpected folder(s) {extra}")
        for c, cls in enumerate(CLASSES):
            d = folder / split / cls
            if d.is_dir():
                members[(split, c)] = [(str(p), p.read_bytes()) for p in d.iterdir()
                                       if p.is_file() and p.name.lower().endswith(".jpg")]
    return members


def _decode_jpegs(members: dict, where: Path, strict: bool):
    """Check the class folders (and counts), decode every image: uint8 (x_train, ...)."""
    for split in SPLITS:
        for c, cls in enumerate(CLASSES):
            if not members.get((split, c)):
                raise CIFARFormatError(f"{where}: no images in {JPEG_FOLDER}/{split}/{cls}/ "
                                       f"(class folder missing or empty)")
    items = [[(c, item) for c in range(len(CLASSES)) for item in sorted(members[(split, c)])]
             for split in SPLITS]
    labels = [np.array([c for c, _ in split_items], np.int32) for split_items in items]
    if strict:
        _check_complete(labels, where)
    Image = _pillow()
    parts = []
    for split_items, y in zip(items, labels):
        x = np.empty((len(y),) + IMAGE_SHAPE, np.uint8)
        for i, (_, (name, data)) in enumerate(split_items):
            try:
                with Image.open(io.BytesIO(data), formats=("JPEG",)) as im:
                    x[i] = _checked(np.asarray(im.convert("RGB")), name)
            except CIFARFormatError:
                raise
            except Exception as e:  # Pillow: UnidentifiedImageError, OSError (truncated), ...
                raise CIFARFormatError(f"{name}: not a readable JPEG, truncated or corrupt "
                                       f"({type(e).__name__}: {e})") from e
        parts += [x, y]
    return tuple(parts)


def _check_complete(labels, where: Path) -> None:
    """strict: 50,000 / 10,000 images, 5,000 / 1,000 per class, or DatasetMismatchError."""
    counts = [np.bincount(y, minlength=len(CLASSES)).tolist() for y in labels]
    if any(c != [full] * len(CLASSES) for c, full in zip(counts, PER_CLASS)):
        raise DatasetMismatchError(
            f"{where} is not the complete CIFAR-10: found {len(labels[0])} train / "
            f"{len(labels[1])} test images (per class {counts[0]} / {counts[1]}); the complete "
            f"set has 50000 / 10000, 5000 / 1000 per class. Pass strict=False to load a "
            f"subset (a test fixture).")


def _checked(a: np.ndarray, name: str) -> np.ndarray:
    if a.shape != IMAGE_SHAPE:
        raise CIFARFormatError(f"{name}: image is {a.shape[1]}x{a.shape[0]}, expected 32x32")
    return a


# --------------------------------------------------------------------------- cache


def _source_key(kind: str, path: Path) -> str:
    """The source's identity: size, mtime and SHA-256 (tarball) or every file's (folder)."""
    h = hashlib.sha256(f"{_CACHE_FORMAT} {kind}".encode())
    if kind == "jpeg_tar":
        st = path.stat()
        h.update(f"{st.st_size} {st.st_mtime_ns}".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    else:
        for p in sorted(path.glob("*/*/*")):
            st = p.stat()
            h.update(f"{p.relative_to(path).as_posix()} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _payload_digest(parts) -> str:
    h = hashlib.sha256()
    for a in parts:
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


_NAMES = ("x_train", "y_train", "x_test", "y_test")


def _read_cache(path: Path, key: str):
    """The cached arrays, or None (absent, other source, or damaged: then with a warning)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("source") != key:
                return None  # the source changed: decode it again
            parts = tuple(z[n] for n in _NAMES)
        if _payload_digest(parts) != meta["sha256"]:
            raise ValueError("checksum mismatch")
        return parts
    except Exception as e:  # noqa: BLE001 - a damaged cache is never trusted
        warnings.warn(f"CIFAR-10 cache {path} is damaged ({type(e).__name__}: {e}); "
                      f"decoding the source again", RuntimeWarning, stacklevel=3)
        return None


def _write_cache(path: Path, key: str, parts) -> None:
    """Write atomically: a temporary file in the same folder, then os.replace."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            meta = json.dumps({"source": key, "sha256": _payload_digest(parts)})
            np.savez(f, meta=np.array(meta), **dict(zip(_NAMES, parts)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"could not write the CIFAR-10 cache {path} ({e}); it will be decoded "
                      f"again next time", RuntimeWarning, stacklevel=3)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _load_jpeg(kind: str, path: Path, strict: bool, cache_dir, cache: bool):
    key = _source_key(kind, path)
    where = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    file = where / f"cifar10-jpeg-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]}.npz"
    parts = _read_cache(file, key) if cache else None
    if parts is None:
        members = _tar_members(path) if kind == "jpeg_tar" else _dir_members(path)
        parts = _decode_jpegs(members, path, strict)
        if cache:
            _write_cache(file, key, parts)
    elif strict:
        _check_complete(parts[1::2], path)
    return parts


# --------------------------------------------------------------------------- public loader


def load_cifar10(data_dir=None, *, cache_dir=None, cache: bool = True, source: str = "auto",
                 strict: bool = True, flatten: bool = False, dtype=np.float32, seed: int = 0,
                 test_fraction: float | None = None) -> Dataset:
    """Load CIFAR-10 (see the module docstring) as a :class:`~reram_emu.datasets.Dataset`.

    Args:
        data_dir: folder holding ``cifar-10-batches-py/``, ``cifar10-jpeg.tar.gz`` or
            ``cifar10-jpeg/`` (or the canonical folder itself); None: ``$RERAM_EMU_DATA``.
        cache_dir: cache folder for the decoded JPEG copy (default :func:`default_cache_dir`);
            ``cache=False`` neither reads nor writes it.
        source: "auto" (canonical first), "pickle" or "jpeg".
        strict: insist on the complete 50,000 / 10,000 set (5,000 / 1,000 per class).
        flatten, dtype, seed, test_fraction: as for :func:`reram_emu.datasets.load_dataset`
            (``test_fraction`` pools the 60,000 images and re-splits them, stratified).

    ``name`` is ``"cifar10"`` for the canonical pickles, :data:`JPEG_LABEL` for the JPEG copy.
    """
    dtype = _check_arguments(seed, test_fraction, flatten, dtype, strict)
    if not isinstance(cache, (bool, np.bool_)):
        raise DatasetTypeError(f"cache must be True or False, got {cache!r}")
    if cache_dir is not None and (not isinstance(cache_dir, (str, os.PathLike))
                                  or os.fspath(cache_dir) in ("", b"")):
        raise DatasetTypeError(f"cache_dir must be a non-empty str or os.PathLike, got "
                               f"{cache_dir!r}")
    kind, path = find_cifar10(data_dir, source)
    if kind == "pickle":
        parts, name = _read_pickles(path, bool(strict)), "cifar10"
        if strict:
            _check_complete(parts[1::2], path)
    else:
        parts, name = _load_jpeg(kind, path, bool(strict), cache_dir, bool(cache)), JPEG_LABEL
    if test_fraction is not None:
        x, y = np.concatenate(parts[0::2]), np.concatenate(parts[1::2])
        tr, te = _stratified_split(y, test_fraction, seed)
        parts = (x[tr], y[tr], x[te], y[te])

    def images(a):
        a = a.astype(dtype) / dtype.type(255)
        return a.reshape(len(a), -1) if flatten else a

    return Dataset(x_train=images(parts[0]), y_train=parts[1].astype(np.int32),
                   x_test=images(parts[2]), y_test=parts[3].astype(np.int32),
                   name=name, num_classes=len(CLASSES), image_shape=IMAGE_SHAPE)


# --------------------------------------------------------------------------- augmentation


@partial(jax.jit, static_argnames=("pad", "flip"))
def augment(key: jax.Array, images: jax.Array, pad: int = 4, flip: bool = True) -> jax.Array:
    """Random crop after ``pad`` pixels of zero padding, and random horizontal flip.

    ``images``: (N, H, W, C); each image gets its own offset (uniform in [0, 2 pad] per
    axis) and, with ``flip``, flip (probability 1/2) from ``jax.random.split(key, N)``. Pure
    and jitted: the same key gives the same output; vmap-able over keys. ``flip=False`` with a
    small ``pad`` is the random-shift augmentation of digits (a flipped digit is another
    glyph).
    """
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise TypeError(f"pad must be a non-negative int, got {pad!r}")
    if not isinstance(flip, bool):
        raise TypeError(f"flip must be a bool, got {flip!r}")
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape} (load with "
                         f"flatten=False)")
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(k, img):
        k_shift, k_flip = jax.random.split(k)
        dy, dx = jax.random.randint(k_shift, (2,), 0, 2 * pad + 1)
        crop = jax.lax.dynamic_slice(img, (dy, dx, 0), (h, w, c))
        return jnp.where(jax.random.bernoulli(k_flip), crop[:, ::-1], crop) if flip else crop

    return jax.vmap(one)(jax.random.split(key, n), padded)
