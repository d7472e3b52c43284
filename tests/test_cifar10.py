"""The offline CIFAR-10 loader (canonical pickles, the JPEG copy, the cache) and augmentation,
on tiny fixture files written in the real formats."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reram_emu import cifar10 as C
from reram_emu.datasets import DatasetMismatchError, DatasetNotFoundError, load_dataset

Image = pytest.importorskip("PIL.Image")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / C.JPEG_TARBALL


def _batch(n, seed, label_offset=0):
    rng = np.random.default_rng(seed)
    hwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = [(i + label_offset) % 10 for i in range(n)]
    chw_rows = hwc.transpose(0, 3, 1, 2).reshape(n, 3072)
    return hwc, np.array(labels, np.int32), {b"batch_label": b"fixture", b"labels": labels,
                                             b"data": chw_rows,
                                             b"filenames": [b"x.png"] * n}


def _write_pickles(folder: Path, n=6, batches=C.TRAIN_BATCHES):
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i, name in enumerate(batches):
        x, y, d = _batch(n, i, i)
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
        xs.append(x), ys.append(y)
    xt, yt, d = _batch(n, 99)
    (folder / C.TEST_BATCH).write_bytes(pickle.dumps(d, protocol=2))
    return np.concatenate(xs), np.concatenate(ys), xt, yt


def _jpeg(seed) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=75)
    return buf.getvalue()


def _jpeg_tree(per_class=2):
    """{relative path: jpeg bytes} in the JPEG copy's layout."""
    files = {}
    for split in C.SPLITS:
        for c, cls in enumerate(C.CLASSES):
            for i in range(per_class):
                files[f"{C.JPEG_FOLDER}/{split}/{cls}/{i:04d}.jpg"] = _jpeg(
                    1000 * (split == "test") + 10 * c + i)
    return files


def _write_tar(path: Path, files: dict):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# --------------------------------------------------------------------------- canonical


def test_canonical_pickles_round_trip_exactly(tmp_path):
    x, y, xt, yt = _write_pickles(tmp_path / C.CANONICAL_FOLDER)
    for where in (tmp_path, tmp_path / C.CANONICAL_FOLDER):
        d = C.load_cifar10(where, strict=False)
        assert d.name == "cifar10" and d.image_shape == (32, 32, 3) and d.num_classes == 10
        assert np.array_equal(np.round(d.x_train * 255).astype(np.uint8), x)  # HWC, exact
        assert np.array_equal(d.y_train, y) and np.array_equal(d.y_test, yt)
        assert np.array_equal(np.round(d.x_test * 255).astype(np.uint8), xt)
    flat = load_dataset("cifar10", data_dir=tmp_path, strict=False, flatten=True)
    assert flat.x_train.shape == (30, 3072)
    assert np.array_equal(np.round(flat.x_train[0] * 255).astype(np.uint8), x[0].reshape(-1))
    again = load_dataset("cifar10", data_dir=tmp_path, strict=False, test_fraction=0.5, seed=3)
    other = load_dataset("cifar10", data_dir=tmp_path, strict=False, test_fraction=0.5, seed=3)
    assert np.array_equal(again.y_test, other.y_test)  # deterministic split
    assert len(again.y_train) + len(again.y_test) == 36


def test_strict_insists_on_the_complete_set(tmp_path):
    _write_pickles(tmp_path)
    with pytest.raises(DatasetMismatchError, match="not the complete CIFAR-10.*strict=False"):
        C.load_cifar10(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="lacks data_batch_3"):
        C.load_cifar10(tmp_path)
    assert len(C.load_cifar10(tmp_path, strict=False).y_train) == 24


def test_a_missing_data_set_says_where_to_put_it(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py.*data_dir=.*downloaded"):
        C.load_cifar10(tmp_path / "nowhere")
    monkeypatch.delenv(C.DATA_ENV, raising=False)
    with pytest.raises(DatasetNotFoundError, match="RERAM_EMU_DATA"):
        C.load_cifar10()
    _write_pickles(tmp_path)
    monkeypatch.setenv(C.DATA_ENV, str(tmp_path))
    assert len(C.load_cifar10(strict=False).y_test) == 6


def test_damaged_or_foreign_pickles_are_refused(tmp_path):
    _write_pickles(tmp_path)
    good = (tmp_path / "data_batch_1").read_bytes()
    (tmp_path / "data_batch_1").write_bytes(good[: len(good) // 2])
    with pytest.raises(C.CIFARFormatError, match="data_batch_1.*truncated or corrupt"):
        C.load_cifar10(tmp_path, strict=False)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(C.CIFARFormatError, match="refusing to load"):
        C.load_cifar10(tmp_path, strict=False)
    _, _, d = _batch(4, 0)
    d[b"fine_labels"] = d.pop(b"labels")
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(DatasetMismatchError, match="CIFAR-100"):
        C.load_cifar10(tmp_path, strict=False)
    _, _, d = _batch(4, 0)
    d[b"data"] = d[b"data"][:, :100]
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(C.CIFARFormatError, match=r"uint8 \(n, 3072\)"):
        C.load_cifar10(tmp_path, strict=False)


# --------------------------------------------------------------------------- JPEG copy


def test_jpeg_tarball_and_folder_load_in_class_order(tmp_path):
    files = _jpeg_tree()
    _write_tar(tmp_path / C.JPEG_TARBALL, files)
    cache = tmp_path / "cache"
    d = C.load_cifar10(tmp_path, strict=False, cache_dir=cache)
    assert d.name == C.JPEG_LABEL == "CIFAR-10 (JPEG q75 copy)"
    assert d.x_train.shape == (20, 32, 32, 3) and d.x_test.shape == (20, 32, 32, 3)
    assert list(d.y_train) == [c for c in range(10) for _ in range(2)]
    # pixels are Pillow's own decode of each file (JPEG is lossy against the source)
    first = _decode(files[f"{C.JPEG_FOLDER}/train/airplane/0000.jpg"])
    assert np.array_equal(np.round(d.x_train[0] * 255).astype(np.uint8), first)
    last = _decode(files[f"{C.JPEG_FOLDER}/test/truck/0001.jpg"])
    assert np.array_equal(np.round(d.x_test[-1] * 255).astype(np.uint8), last)
    # the extracted folder gives the same arrays
    folder = tmp_path / "extracted"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    e = C.load_cifar10(folder, strict=False, cache_dir=cache)
    assert e.name == C.JPEG_LABEL
    assert np.array_equal(e.x_train, d.x_train) and np.array_equal(e.y_test, d.y_test)
    with pytest.raises(DatasetMismatchError, match="not the complete"):
        C.load_cifar10(tmp_path, cache_dir=cache)


def test_the_cache_is_used_and_a_damaged_one_rebuilt(tmp_path, monkeypatch):
    _write_tar(tmp_path / C.JPEG_TARBALL, _jpeg_tree(1))
    cache = tmp_path / "cache"
    first = C.load_cifar10(tmp_path, strict=False, cache_dir=cache)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"

    def no_decoding(*a, **k):
        raise AssertionError("decoded again")

    with monkeypatch.context() as patch:
        patch.setattr(C, "_decode_jpegs", no_decoding)
        cached = C.load_cifar10(tmp_path, strict=False, cache_dir=cache)
    assert np.array_equal(cached.x_train, first.x_train)
    data = files[0].read_bytes()
    files[0].write_bytes(data[:100] + bytes(len(data) - 100))
    with pytest.warns(RuntimeWarning, match="damaged"):
        rebuilt = C.load_cifar10(tmp_path, strict=False, cache_dir=cache)
    assert np.array_equal(rebuilt.x_train, first.x_train)
    with monkeypatch.context() as patch:
        patch.setattr(C, "_decode_jpegs", no_decoding)
        C.load_cifar10(tmp_path, strict=False, cache_dir=cache)  # the rebuilt cache is good


def test_a_truncated_jpeg_or_tarball_raises_and_leaves_nothing_behind(tmp_path):
    files = _jpeg_tree(1)
    name = f"{C.JPEG_FOLDER}/test/cat/0000.jpg"
    files[name] = files[name][:200]
    _write_tar(tmp_path / C.JPEG_TARBALL, files)
    cache = tmp_path / "cache"
    with pytest.raises(C.CIFARFormatError, match="cat/0000.jpg.*truncated or corrupt"):
        C.load_cifar10(tmp_path, strict=False, cache_dir=cache)
    assert not cache.exists() or list(cache.iterdir()) == []
    _write_tar(tmp_path / C.JPEG_TARBALL, _jpeg_tree(1))
    data = (tmp_path / C.JPEG_TARBALL).read_bytes()
    (tmp_path / C.JPEG_TARBALL).write_bytes(data[: len(data) // 2])
    with pytest.raises(C.CIFARFormatError, match="truncated or corrupt tarball"):
        C.load_cifar10(tmp_path, strict=False, cache_dir=cache)
    assert not cache.exists() or list(cache.iterdir()) == []


@pytest.mark.skipif(not SHARED.exists(), reason="the shared CIFAR-10 JPEG copy is absent")
def test_the_shared_jpeg_copy_is_complete(tmp_path):
    d = C.load_cifar10(SHARED.parent, cache_dir=tmp_path)
    assert d.name == C.JPEG_LABEL
    assert d.x_train.shape == (50000, 32, 32, 3) and d.x_test.shape == (10000, 32, 32, 3)
    assert np.bincount(d.y_train).tolist() == [5000] * 10
    assert np.bincount(d.y_test).tolist() == [1000] * 10


# --------------------------------------------------------------------------- augmentation


def test_augment_is_a_keyed_random_crop_and_flip():
    images = jax.random.uniform(jax.random.key(0), (8, 6, 5, 3))
    a = C.augment(jax.random.key(1), images, pad=2)
    assert a.shape == images.shape
    assert np.array_equal(a, C.augment(jax.random.key(1), images, pad=2))
    assert not np.array_equal(a, C.augment(jax.random.key(2), images, pad=2))
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
    for i in range(8):
        crops = [padded[i, dy:dy + 6, dx:dx + 5] for dy in range(5) for dx in range(5)]
        crops += [c[:, ::-1] for c in crops]
        assert any(np.array_equal(np.asarray(a[i]), c) for c in crops), i
    zero = np.asarray(C.augment(jax.random.key(3), images, pad=0))
    for i in range(8):  # no padding: the image or its mirror
        assert (np.array_equal(zero[i], images[i]) or
                np.array_equal(zero[i], np.asarray(images[i])[:, ::-1]))
    # flip=False (digits' random shift): an unflipped crop, and with no padding the image
    assert np.array_equal(C.augment(jax.random.key(3), images, pad=0, flip=False), images)
    shifted = np.asarray(C.augment(jax.random.key(1), images, pad=2, flip=False))
    for i in range(8):
        crops = [padded[i, dy:dy + 6, dx:dx + 5] for dy in range(5) for dx in range(5)]
        assert any(np.array_equal(shifted[i], c) for c in crops), i
    with pytest.raises(TypeError, match="flip must be a bool"):
        C.augment(jax.random.key(0), images, flip=1)
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        C.augment(jax.random.key(0), jnp.zeros((4, 3072)))
    with pytest.raises(TypeError, match="pad"):
        C.augment(jax.random.key(0), images, pad=-1)
