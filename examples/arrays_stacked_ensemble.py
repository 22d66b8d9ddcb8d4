"""A stacked ensemble on shared arrays: two layers of scikit-learn models fit on K folds.

Layer 1 fits three models on each of K folds of the training rows and writes their out-of-fold
predictions into one shared output (a column per model); it also fits each model on every
training row to predict the test rows. Layer 2 fits a logistic regression the same way on
layer 1's predictions. The training data is shared once with the worker processes, which read
it without a copy and write their predictions in place.

Needs scikit-learn: pip install "headrace[sklearn]"
Run: python examples/arrays_stacked_ensemble.py
"""

import numpy as np
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from sklearn.naive_bayes import GaussianNB

import headrace as hr

LAYERS = [
    [LogisticRegression(max_iter=500), RandomForestClassifier(50, random_state=0), GaussianNB()],
    [LogisticRegression()],
]
#: The test-row features each layer predicts from, and the output its full fits fill.
TEST_IN, TEST_OUT = ["X_test", "T1"], ["T1", "T2"]


def fit_predict(task, arrays):
    """Fit model j of a layer on a fold's training rows and predict its held-out rows; with no
    fold, fit it on every row and predict the test rows. Returns the model's name."""
    layer, j, fold = task
    model = clone(LAYERS[layer][j])
    X, y = arrays.input, arrays.y  # the layer's input: X for layer 1, layer 1's output for 2
    if fold is None:
        model.fit(X, y)
        arrays[TEST_OUT[layer]][:, j] = model.predict_proba(arrays[TEST_IN[layer]])[:, 1]
    else:
        train, held_out = fold
        model.fit(X[train], y[train])
        arrays.output[held_out, j] = model.predict_proba(X[held_out])[:, 1]
    return type(model).__name__


def tasks(layer, folds):
    return [(layer, j, fold) for j in range(len(LAYERS[layer])) for fold in [*folds, None]]


def main():
    X, y = make_classification(2000, 20, n_informative=6, flip_y=0.05, random_state=0)
    X_train, X_test, y_train, y_test = X[:1500], X[1500:], y[:1500], y[1500:]
    folds = list(KFold(4, shuffle=True, random_state=0).split(X_train))

    with hr.ArrayJob(X=X_train, y=y_train, X_test=X_test, workers=2, backend="process") as job:
        P1 = job.output("P1", (len(X_train), len(LAYERS[0])))  # out-of-fold predictions
        P2 = job.output("P2", (len(X_train), len(LAYERS[1])))
        job.output("T1", (len(X_test), len(LAYERS[0])))  # test-row predictions
        T2 = job.output("T2", (len(X_test), len(LAYERS[1])))
        job.stack([(fit_predict, tasks(0, folds), P1), (fit_predict, tasks(1, folds), P2)])
        names = job.layer_results[0][:: len(folds) + 1]

    for j, name in enumerate(names):
        print(f"layer 1 {name}: out-of-fold accuracy {np.mean((P1[:, j] > 0.5) == y_train):.3f}")
    print(f"stacked out-of-fold accuracy {np.mean((P2[:, 0] > 0.5) == y_train):.3f}")
    print(f"stacked test accuracy {np.mean((T2[:, 0] > 0.5) == y_test):.3f}")


if __name__ == "__main__":
    main()
