"""Every example of the seed document (Pescador's docs) runs on ``headrace.compat.pescador``.

Each test below is one example of ``shared/seeds/002_f2dea99e5310bf26.txt``, its code as the
document gives it with only ``import pescador`` / ``from pescador import ...`` changed to
``headrace.compat.pescador``. What the document leaves to the reader or takes from elsewhere is
supplied here and marked ``# stand-in``: data sets that would be downloaded (Iris, MNIST) or
need scikit-learn / Keras are small generated arrays and tiny local models; infinite loops
(``for data in mux(): process(data)``) end by raising `Enough` from the loop body. Three
mistakes of the document itself are fixed and marked ``# doc fix``.
"""

# The examples keep the document's own style (dict(), str.format, unused names): the point is
# that its code runs as written.
# ruff: noqa: C408, UP032, B905, B007, RUF059

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import headrace.compat.pescador as pescador
from headrace.compat.pescador import Mux, Streamer


class Enough(Exception):
    """Raised by a stand-in loop body to leave an example's infinite loop."""


def stopping_after(n):
    """A loop body that accepts n items, then raises `Enough`."""
    seen = []

    def body(item):
        seen.append(item)
        if len(seen) >= n:
            raise Enough

    body.seen = seen
    return body


def iris_like(n=150, d=4, seed=0):  # stand-in for the Iris data of the basic example
    rng = np.random.default_rng(seed)
    Y = rng.integers(0, 3, n)
    X = rng.standard_normal((n, d)) + Y[:, None]
    return X, Y


# The document's generator, shared by several examples.
def noisy_samples(X, Y, batch_size=16, sigma=1.0):
    """Generate an infinite stream of noisy samples from a labeled dataset."""
    n, d = X.shape
    while True:
        i = np.random.randint(0, n, size=batch_size)
        noise = sigma * np.random.randn(batch_size, d)
        yield dict(X=X[i] + noise, Y=Y[i])


# --- Basic usage ------------------------------------------------------------------------------


def test_streamers() -> None:
    X, Y = iris_like()
    train = np.arange(100)  # stand-in

    streamer = pescador.Streamer(noisy_samples, X[train], Y[train])
    batch_stream2 = streamer.generate()

    first = next(batch_stream2)
    assert first["X"].shape == (16, 4) and first["Y"].shape == (16,)
    assert len(list(streamer.generate(max_batches=5))) == 5

    # Equivalent to batch_stream2 above
    batch_stream3 = streamer()
    assert next(batch_stream3)["X"].shape == (16, 4)
    batch_stream2.close()
    batch_stream3.close()


# --- Stream re-use and multiplexing -----------------------------------------------------------


class SGDClassifier:  # stand-in for scikit-learn's: a softmax regression fit by SGD
    def __init__(self):
        self.W = None

    def partial_fit(self, X, Y, classes):
        if self.W is None:
            self.classes = np.asarray(classes)
            self.W = np.zeros((X.shape[1] + 1, len(classes)))
        Xb = np.hstack([X, np.ones((len(X), 1))])
        logits = Xb @ self.W
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(Y)), np.searchsorted(self.classes, Y)] -= 1
        self.W -= 0.01 * Xb.T @ p / len(X)

    def predict(self, X):
        return self.classes[(np.hstack([X, np.ones((len(X), 1))]) @ self.W).argmax(axis=1)]


def load_breast_cancer():  # stand-in for sklearn.datasets.load_breast_cancer
    rng = np.random.default_rng(1)
    target = rng.integers(0, 2, 569)
    return {"data": rng.standard_normal((569, 30)) + 1.5 * target[:, None], "target": target}


def ShuffleSplit(n, n_splits=1, test_size=0.1):  # stand-in: scikit-learn's old signature
    rng = np.random.default_rng(2)
    for _ in range(n_splits):
        order = rng.permutation(n)
        cut = int(n * test_size)
        yield order[cut:], order[:cut]


def accuracy_score(a, b):  # stand-in
    return float(np.mean(np.asarray(a) == np.asarray(b)))


def test_multiplexing(capsys: pytest.CaptureFixture[str]) -> None:
    # Load some example data from sklearn
    raw_data = load_breast_cancer()
    X, Y = raw_data["data"], raw_data["target"]
    classes = np.unique(Y)

    for train, test in ShuffleSplit(len(X), n_splits=1, test_size=0.1):
        # Instantiate a linear classifier
        estimator = SGDClassifier()

        # Build a collection of Streamers with different noise scales
        streams = [
            Streamer(noisy_samples, X[train], Y[train], sigma=sigma)
            for sigma in [0, 0.5, 1.0, 2.0, 4.0]
        ]

        # Build a mux stream, keeping 3 streams alive at once
        mux_stream = Mux(
            streams,
            k=3,  # Keep 3 streams alive at once
            lam=64,
        )  # Use a poisson rate of 64

        # Fit the model to the stream, use at most 5000 batches
        for batch in mux_stream(max_batches=5000):
            estimator.partial_fit(batch["X"], batch["Y"], classes=classes)

        # And report the accuracy
        Ypred = estimator.predict(X[test])
        print("Test accuracy: {:.3f}".format(accuracy_score(Y[test], Ypred)))

    accuracy = float(capsys.readouterr().out.split(":")[1])
    assert accuracy > 0.8


# --- Sampling from disk -----------------------------------------------------------------------


def sample_npz(npz_file, n):
    """Generate an infinite sequence of contiguous samples
    from the input `npz_file`.

    Each iterate has `n > 0` rows.
    """
    with np.load(npz_file) as data:
        # How many rows are in the data?
        # We assume that data['Y'] has the same length
        n_total = len(data["X"])

        while True:
            # Compute the index offset
            idx = np.random.randint(n_total - n)
            yield dict(X=data["X"][idx : idx + n], Y=data["Y"][idx : idx + n])


def sample_npz_copy(npz_file, n):
    with np.load(npz_file) as data:
        # How many rows are in the data?
        # We assume that data['Y'] has the same length
        n_total = len(data["X"])

        while True:
            # Compute the index offset
            idx = np.random.randint(n_total - n)
            yield dict(
                X=data["X"][idx : idx + n].copy(),  # <-- Note the explicit copy
                Y=data["Y"][idx : idx + n].copy(),
            )


def sample_npy_mmap(npy_x, npy_y, n):
    # Open each file in "copy-on-write" mode, so that the files are read-only
    X = np.load(npy_x, mmap_mode="c")
    Y = np.load(npy_y, mmap_mode="c")

    n_total = len(X)

    while True:
        # Compute the index offset
        idx = np.random.randint(n_total - n)
        yield dict(X=X[idx : idx + n], Y=Y[idx : idx + n])


@pytest.fixture
def npz_files(tmp_path):  # stand-in: "LIST OF PRE-COMPUTED NPZ FILES"
    rng = np.random.default_rng(3)
    paths = []
    for j in range(40):
        path = str(tmp_path / f"song{j}.npz")
        np.savez(path, X=rng.standard_normal((50, 8)), Y=np.full(50, j))
        paths.append(path)
    return paths


@pytest.mark.parametrize("sampler", [sample_npz, sample_npz_copy])
def test_sampling_from_npz(npz_files, sampler) -> None:
    n = 16
    streams = [pescador.Streamer(sampler, npz_f, n) for npz_f in npz_files]

    # Keep 32 streams alive at once
    # Draw on average 16 patches from each stream before deactivating
    mux_stream = pescador.Mux(streams, k=32, lam=16)

    seen = set()
    count = 0
    for batch in mux_stream(max_batches=1000):
        # DO LEARNING HERE
        count += 1
        assert batch["X"].shape == (16, 8) and len(set(batch["Y"].tolist())) == 1
        seen.add(int(batch["Y"][0]))
    assert count == 1000 and len(seen) >= 16  # ~62 activations drawn from 40 archives


def test_sampling_from_npy_memory_maps(tmp_path) -> None:
    rng = np.random.default_rng(4)
    npy_x_files, npy_y_files = [], []  # stand-in: "LIST OF PRE-COMPUTED NPY FILES"
    for j in range(6):
        np.save(tmp_path / f"x{j}.npy", rng.standard_normal((40, 5)))
        np.save(tmp_path / f"y{j}.npy", np.full(40, j))
        npy_x_files.append(str(tmp_path / f"x{j}.npy"))
        npy_y_files.append(str(tmp_path / f"y{j}.npy"))
    n = 16

    # Using this streamer is similar to the first example, but now you need a separate
    # NPY file for each X and Y
    streams = [
        pescador.Streamer(sample_npy_mmap, npy_x, npy_y, n)  # doc fix: sample_npz -> _npy_mmap,
        for (npy_x, npy_y) in zip(npy_x_files, npy_y_files)  # and the missing comma before n
    ]
    mux_stream = pescador.Mux(streams, k=4, lam=16)  # stand-in: the use, as in the npz example
    batches = list(mux_stream(max_batches=200))
    assert len(batches) == 200 and {b["X"].shape for b in batches} == {(16, 5)}


# --- Buffered streaming -----------------------------------------------------------------------


def test_buffered_streaming() -> None:
    X, Y = iris_like()
    train = np.arange(120)  # stand-in

    # Create an initial streamer
    streamer = pescador.Streamer(noisy_samples, X[train], Y[train])

    minibatch_size = 128
    # Wrap your streamer
    buffered_streamer = pescador.BufferedStreamer(streamer, minibatch_size)

    body = stopping_after(20)  # stand-in for the loop's "..."
    # Generate batches in exactly the same way as you would from the base streamer
    with pytest.raises(Enough):
        for batch in buffered_streamer():
            body(batch)
    assert {b["X"].shape for b in body.seen} == {(128, 4)}
    assert {b["Y"].shape for b in body.seen} == {(128,)}


# --- ZMQ example ------------------------------------------------------------------------------


def batch_gen():
    """
    Returns
    -------
    batch_dict : dict
        A batch which looks like it might come from some
        machine learning problem, with X as Features, and Y as targets.
    """
    while True:
        yield dict(X=np.random.random((1, 10)), Y=np.atleast_2d(np.random.randint(10)))


def test_zmq_example(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("zmq")
    n_test_batches = 1e3

    # Construct a streamer
    s = pescador.Streamer(batch_gen)

    # Wrap teh streamer in a ZMQ streamer
    zs = pescador.ZMQStreamer(s)

    # Get batches from the stream as you would normally.
    t0 = time.time()
    batch_count = 0
    for batch in zs(max_batches=n_test_batches):
        batch_count += len(batch["X"])
        # Train your network, etc.

    duration = time.time() - t0
    print(
        "Generated {} samples from ZMQ\n\tin {:.5f}s ({:.5f} / sample)".format(
            batch_count, duration, duration / batch_count
        )
    )

    buffer_size = 10
    buffered_zmq = pescador.BufferedStreamer(zs, buffer_size)

    # Get batches from the stream as you would normally.
    iter_count = 0
    batch_count = 0
    t0 = time.time()
    for batch in buffered_zmq(max_batches=n_test_batches):
        iter_count += 1
        batch_count += len(batch["X"])

    duration = time.time() - t0
    print(
        "Generated {} batches of {} samples from Buffered ZMQ Streamer"
        "\n\tin {:.5f}s ({:.5f} / sample)".format(
            iter_count, batch_count, duration, duration / batch_count
        )
    )

    out = capsys.readouterr().out
    assert "Generated 1000 samples from ZMQ" in out
    assert "Generated 1000 batches of 10000 samples from Buffered ZMQ Streamer" in out


# --- Muxing multiple datasets together --------------------------------------------------------


def load_mnist():  # stand-in for keras.datasets.mnist.load_data (a download)
    rng = np.random.default_rng(5)
    x_train = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8)
    y_train = rng.integers(0, 10, 300, dtype=np.uint8)
    return (x_train, y_train), (x_train[:50], y_train[:50])


def split_and_save_datasets(X, Y, paths):
    """Shuffle X and Y into n / len(paths) datasets, and save them
    to disk at the locations provided in paths.
    """
    shuffled_idxs = np.random.permutation(np.arange(len(X)))

    for i in range(len(paths)):
        # Take every len(paths) item, starting at i.
        # len(paths) is 3, so this would be [0::3], [1::3], [2::3]
        X_i = X[shuffled_idxs[i :: len(paths)]]
        Y_i = Y[shuffled_idxs[i :: len(paths)]]
        np.savez(paths[i], X=X_i, Y=Y_i)


def npz_generator(npz_path):
    """Generate data from an npz file."""
    npz_data = np.load(npz_path)
    X = npz_data["X"]
    # y's are binary vectors, and should be of shape (1, 10) after this.
    y = npz_data["Y"]

    n = X.shape[0]

    while True:
        i = np.random.randint(0, n)
        yield {"X": X[np.newaxis, i], "Y": y[np.newaxis, i]}


@pytest.mark.parametrize("option", [1, 2])
def test_muxing_multiple_datasets(tmp_path, option: int) -> None:
    dataset1_path = str(tmp_path / "dataset1_train.npz")  # stand-in for "/tmp/..."
    dataset2_path = str(tmp_path / "dataset2_train.npz")
    dataset3_path = str(tmp_path / "dataset3_train.npz")
    datasets = [dataset1_path, dataset2_path, dataset3_path]

    (X_train, Y_train), (X_test, Y_test) = load_mnist()
    split_and_save_datasets(X_train, Y_train, datasets)

    streams = [pescador.Streamer(npz_generator, x) for x in datasets]

    if option == 1:
        mux = pescador.mux.Mux(
            streams,
            # Three streams, always active.
            k=len(streams),
            # We want to sample from each stream infinitely,
            # so we turn off the lam parameter, which
            # controls how long to sample from each stream.
            lam=None,
        )
    else:
        mux = pescador.mux.Mux(
            streams,
            # Only allow one active stream
            k=1,
            # Sample on average 1000 samples from a stream before
            # moving onto another one.
            lam=1000,
        )

    process = stopping_after(3000)  # stand-in
    with pytest.raises(Enough):
        for data in mux():
            process(data)
    assert {d["X"].shape for d in process.seen} == {(1, 28, 28)}


# --- A Keras example --------------------------------------------------------------------------

batch_size = 128
num_classes = 10
epochs = 2  # stand-in for 12: the stand-in model only counts batches
img_rows, img_cols = 28, 28


def to_categorical(y, num_classes):  # stand-in for keras.utils.to_categorical
    return np.eye(num_classes, dtype="float32")[y]


def setup_data():  # stand-in for the document's (MNIST download, keras backend)
    (x_train, y_train), (x_test, y_test) = load_mnist()
    x_train = x_train.reshape(x_train.shape[0], img_rows, img_cols, 1)
    x_test = x_test.reshape(x_test.shape[0], img_rows, img_cols, 1)
    input_shape = (img_rows, img_cols, 1)
    x_train = x_train.astype("float32") / 255
    x_test = x_test.astype("float32") / 255
    y_train = to_categorical(y_train, num_classes)
    y_test = to_categorical(y_test, num_classes)
    return input_shape, (x_train, y_train), (x_test, y_test)


class Model:  # stand-in for the Keras model: consumes the generator as fit_generator does
    def __init__(self, input_shape):
        self.input_shape = input_shape
        self.batches = 0

    def fit_generator(self, generator, steps_per_epoch, epochs, verbose, validation_data):
        for _ in range(steps_per_epoch * epochs):
            x, y = next(generator)
            assert x.shape == (batch_size, *self.input_shape)
            assert y.shape == (batch_size, num_classes)
            self.batches += 1
        generator.close()

    def evaluate(self, x, y, verbose=0):
        return [0.0, 1.0]


def build_model(input_shape):  # stand-in
    return Model(input_shape)


def data_generator(X, y):
    """A basic generator for the data."""
    X = np.atleast_2d(X)
    # y's are binary vectors, and should be of shape (1, 10) after this.
    y = np.atleast_2d(y)

    n = X.shape[0]

    while True:
        i = np.random.randint(0, n)
        yield {"X": X[np.newaxis, i], "y": y[np.newaxis, i]}


def noisy_generator(X, y, scale=1e-1):
    """A modified version of the original generator which adds gaussian
    noise to the original sample.
    """
    noise_shape = X.shape[1:]
    for sample in data_generator(X, y):
        noise = scale * np.random.randn(*noise_shape)

        yield {"X": sample["X"] + noise, "y": sample["y"]}


def test_keras_example() -> None:
    input_shape, (X_train, Y_train), (X_test, Y_test) = setup_data()

    steps_per_epoch = len(X_train) // batch_size

    # Create two streams from the same data, where one of the streams
    # adds a small amount of Gaussian noise. You could easily perform
    # other data augmentations using the same basic strategy.
    basic_stream = pescador.Streamer(data_generator, X_train, Y_train)
    noisy_stream = pescador.Streamer(noisy_generator, X_train, Y_train)

    # Mux the two streams together.
    mux = pescador.mux.Mux(
        [basic_stream, noisy_stream],
        # Two streams, always active.
        2,
        # We want to sample from each stream infinitely.
        lam=None,
    )

    # Generate batches from the stream
    training_streamer = pescador.BufferedStreamer(mux, batch_size)

    model = build_model(input_shape)
    model.fit_generator(
        training_streamer.tuples("X", "y", cycle=True),
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        verbose=1,
        validation_data=(X_test, Y_test),
    )
    score = model.evaluate(X_test, Y_test, verbose=0)
    print("Test score:", score[0])
    print("Test accuracy:", score[1])
    assert model.batches == steps_per_epoch * epochs


# --- API reference examples -------------------------------------------------------------------


def my_generator(n):
    for i in range(n):
        yield {"X": np.random.randn(1, 3)}


def test_api_streamer(capsys: pytest.CaptureFixture[str]) -> None:
    GS = Streamer(my_generator, 5)
    for i in GS():
        print(i)
    assert len(list(GS(max_items=3))) == 3
    body = stopping_after(12)
    with pytest.raises(Enough):
        for i in GS.cycle():
            body(i)
    body = stopping_after(12)
    with pytest.raises(Enough):
        for i in GS(cycle=True):
            body(i)
    assert capsys.readouterr().out.count("{'X': array(") == 5


def test_api_buffered_streamer() -> None:
    def my_generator(n):
        # Generates a single 30-dimensional example vector for each iterate
        for i in range(n):
            yield dict(X=np.random.randn(1, 30))

    # Wrap the generator in a Streamer
    S = pescador.Streamer(my_generator, 128)
    # A buffered streamer will combine N iterates into a single batch
    N = 10
    B = pescador.BufferedStreamer(S, N)  # doc fix: the document passes my_generator, not S
    MY_PROCESS_FUNCTION = stopping_after(10**6)  # stand-in
    for batch in B():
        # Work on a batch of N=10 examples
        MY_PROCESS_FUNCTION(batch)
    assert [b["X"].shape for b in MY_PROCESS_FUNCTION.seen] == [(10, 30)] * 12  # 128 // 10


def test_api_mux() -> None:
    def my_generator():  # doc fix: the document's my_generator takes n, but is called without
        for i in range(5):
            yield {"X": np.random.randn(1, 3)}

    # Create a collection of streamers
    seeds = [pescador.Streamer(my_generator) for i in range(10)]
    # Multiplex them together into a single streamer
    # Use at most 3 streams at once
    mux = pescador.Mux(seeds, k=3)
    MY_FUNCTION = stopping_after(500)  # stand-in
    with pytest.raises(Enough):
        for batch in mux():
            MY_FUNCTION(batch)


def test_api_zmq_streamer() -> None:
    pytest.importorskip("zmq")
    # Construct a streamer object
    S = pescador.Streamer(my_generator, 7)
    # Wrap the streamer in a ZMQ streamer
    Z = pescador.ZMQStreamer(S)
    # Process as normal
    MY_FUNCTION = stopping_after(10**6)  # stand-in
    for batch in Z():
        MY_FUNCTION(batch)
    assert len(MY_FUNCTION.seen) == 7


# --- the rest of the API ----------------------------------------------------------------------


def test_pescador3_names() -> None:
    a, b, c = (pescador.Streamer(x) for x in ("a", "b", "c"))
    assert set(pescador.StochasticMux([a, b, c], 2, rate=5, random_state=0)(max_iter=60)) == {
        "a",
        "b",
        "c",
    }
    assert len("".join(pescador.ShuffledMux([a, b, c])(max_iter=9))) == 9
    assert "".join(pescador.RoundRobinMux([a, b, c], mode="cycle")(max_iter=9)) == "abcabcabc"
    assert "".join(pescador.ChainMux([pescador.Streamer("abc"), "de"])) == "abcde"
    gen = (pescador.Streamer(ch * 2) for ch in "xy")
    assert "".join(pescador.ChainMux(gen)) == "xxyy"


def test_pescador3_maps() -> None:
    def mygen():
        for i in range(100):
            yield dict(x=np.asarray(i), y=np.asarray(i % 2))

    S = pescador.Streamer(mygen)
    buf = pescador.buffer_stream(S, 5)
    first = next(buf)
    assert first["x"].tolist() == [0, 1, 2, 3, 4] and first["y"].tolist() == [0, 1, 0, 1, 0]
    buf.close()

    def mygen_idx():
        for i in range(12):
            yield dict(x=np.asarray([i]), y=np.asarray([i % 2]))

    S = pescador.Streamer(mygen_idx)
    assert next(pescador.buffer_stream(S, 5))["x"].shape == (5, 1)
    assert next(pescador.buffer_stream(S, 5, axis=0))["x"].tolist() == [0, 1, 2, 3, 4]
    assert len(list(pescador.buffer_stream(S, 5))) == 2
    assert len(list(pescador.buffer_stream(S, 5, partial=True))) == 3

    assert list(pescador.tuples(S.iterate(2), "y", "x"))[1] == (1, 1)
    x, y = next(pescador.keras_tuples(S.iterate(1), inputs="x", outputs=["y"]))
    assert x.tolist() == [0] and isinstance(y, list)
    with pytest.raises(pescador.PescadorError):
        pescador.tuples(S)
    with pytest.raises(pescador.PescadorError):
        pescador.keras_tuples(S)


def test_active_and_activate() -> None:
    s = pescador.Streamer(my_generator, 3)
    assert not s.active
    it = s.iterate()
    next(it)
    assert s.active == 1
    it.close()
    assert not s.active
    s.activate()
    assert s.stream_ is not None and len(list(s.stream_)) == 3


def test_streamable_decorator() -> None:
    @pescador.streamable
    def myfunc(n):
        yield from range(n)

    assert list(myfunc(3)) == [0, 1, 2]


def test_pescador_errors() -> None:
    with pytest.raises(pescador.PescadorError):
        pescador.Streamer(5)
    with pytest.raises(pescador.PescadorError):
        pescador.Mux([], k=1)
    with pytest.raises(pescador.PescadorError):
        pescador.StochasticMux([pescador.Streamer("a")], 1, 5, weights=[1, 2])
    with pytest.raises(pescador.PescadorError):
        pescador.ChainMux(["a"], mode="bogus")

    def bad_rows():
        yield {"X": np.zeros((3, 2)), "Y": np.zeros(2)}

    with pytest.raises(pescador.DataError, match="equal row counts"):
        next(iter(pescador.BufferedStreamer(pescador.Streamer(bad_rows), 2)))


def test_without_replacement_maps_to_the_modes() -> None:
    seeds = [pescador.Streamer([i] * 3) for i in range(4)]
    assert Mux(seeds, k=2, lam=None, with_replacement=False).mode == "exhaustive"
    revived = Mux(seeds, k=2, with_replacement=False, revive=True)
    assert revived.mode == "single_active"
    assert sorted(Mux(seeds, k=9, lam=None, with_replacement=False)) == sorted([0, 1, 2, 3] * 3)


def test_the_mux_submodule_imports() -> None:
    from headrace.compat.pescador.mux import Mux as SubMux

    assert SubMux is pescador.mux.Mux is Mux
    assert os.path.basename(pescador.__file__) == "pescador.py"


@pytest.mark.parametrize(
    "make",
    [
        lambda rs: pescador.StochasticMux(
            [Streamer(list(range(i, 100, 3))) for i in range(3)], 2, rate=4, random_state=rs
        ),
        lambda rs: Mux([Streamer(list(range(i, 100, 3))) for i in range(3)], 2, 4, random_state=rs),
        lambda rs: pescador.ShuffledMux(
            [Streamer(list(range(i, 100, 3))) for i in range(3)], random_state=rs
        ),
        lambda rs: pescador.RoundRobinMux(
            [Streamer(list(range(i, 30, 3))) for i in range(3)],
            mode="permuted_cycle",
            random_state=rs,
        ),
    ],
)
def test_an_int_random_state_seeds_a_RandomState(make):
    # As in pescador: random_state=7 is np.random.RandomState(7), so both draw the same stream.
    from_int = list(make(7)(max_iter=60))
    from_state = list(make(np.random.RandomState(7))(max_iter=60))
    assert from_int == from_state
