"""Neuraxle's documented queued pipelines run on ``headrace.compat.neuraxle``.

The examples of ``shared/seeds/000_789544b155a4334a.txt`` are copied with only the import
changed (the document's imports are implicit: `Identity`, `MultiplyByN` and
`HyperparameterSamples` come from the compat module's stand-ins). Expected results follow
Neuraxle 0.8.1: outputs as an array, the last minibatch padded with None by default.
"""

from __future__ import annotations

import logging
import sys

import cloudpickle
import numpy as np
import pytest

from headrace.compat.neuraxle import (
    BaseStep,
    HyperparameterSamples,
    Identity,
    MinibatchError,
    MultiplyByN,
    NonFittableMixin,
    ParallelQueuedFeatureUnion,
    QueuedPipeline,
    SequentialQueuedPipeline,
    StripAbsentValues,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])

DATA = list(range(100))


# --- the document's examples ---------------------------------------------------------------


def test_step_name_and_step():
    p = SequentialQueuedPipeline(
        [
            ("step_a", Identity()),
            ("step_b", Identity()),
        ],
        n_workers=1,
        batch_size=10,
        max_queued_minibatches=10,
    )
    assert p.transform(DATA).tolist() == DATA


def test_step_name_number_of_workers_and_step():
    p = SequentialQueuedPipeline(
        [
            ("step_a", 1, Identity()),
            ("step_b", 1, Identity()),
        ],
        batch_size=10,
        max_queued_minibatches=10,
    )
    assert p.transform(DATA).tolist() == DATA


def test_step_name_number_of_workers_and_max_size():
    p = SequentialQueuedPipeline(
        [
            ("step_a", 1, 10, Identity()),
            ("step_b", 1, 10, Identity()),
        ],
        batch_size=10,
    )
    assert p.transform(DATA).tolist() == DATA


def test_step_name_workers_and_arguments_for_each_worker():
    p = SequentialQueuedPipeline(
        [("step_a", 1, [("host", "host1"), ("host", "host2")], 10, Identity())], batch_size=10
    )
    assert p.transform(DATA).tolist() == DATA


def test_parallel_feature_union_with_worker_arguments():
    n_workers = 4
    worker_arguments = [
        ("hyperparams", HyperparameterSamples({"multiply_by": 2})) for _ in range(n_workers)
    ]
    p = ParallelQueuedFeatureUnion(
        [
            ("1", n_workers, worker_arguments, MultiplyByN()),
        ],
        batch_size=10,
        max_queued_minibatches=5,
    )
    outputs = p.transform(list(range(100)))
    assert outputs.tolist() == [2 * x for x in range(100)]


# --- the parameters ------------------------------------------------------------------------


class Tag(NonFittableMixin, BaseStep):
    """Records which copy of the step transformed each input."""

    def __init__(self):
        BaseStep.__init__(self)
        NonFittableMixin.__init__(self)
        self.label = "none"

    def transform(self, data_inputs):
        return [f"{x}{self.label}" for x in data_inputs]


def test_worker_arguments_set_attributes_of_each_copy():
    p = SequentialQueuedPipeline(
        [("tag", 2, [("label", "a"), ("label", "b")], Tag())], batch_size=2
    )
    out = p.transform(list(range(8))).tolist()
    assert out == ["0a", "1a", "2b", "3b", "4a", "5a", "6b", "7b"]


def test_step_forms_n_workers_per_step_and_max_queued():
    p = SequentialQueuedPipeline(
        [MultiplyByN(2), (3, MultiplyByN(3)), ("last", 2, 4, Identity())],
        batch_size=7,
        n_workers_per_step=2,
        max_queued_minibatches=3,
        keep_incomplete_batch=False,
    )
    assert p.transform(DATA).tolist() == [6 * x for x in range(98)]
    workers = {s.name: s.workers for s in p.report.stages}
    assert workers == {"minibatches": 1, "MultiplyByN_0": 2, "MultiplyByN_1": 3, "last": 2}


def test_the_last_minibatch_is_padded_with_None_by_default():
    p = SequentialQueuedPipeline([Identity()], batch_size=10)
    assert p.transform(list(range(25))).tolist() == [*range(25), *[None] * 5]


def test_padding_value_strip_and_dropping_the_incomplete_batch():
    def run(**options):
        return SequentialQueuedPipeline([Identity()], batch_size=10, **options).transform(
            list(range(25))
        )

    assert run(default_value_data_inputs=-1).tolist() == [*range(25), *[-1] * 5]
    assert run(default_value_data_inputs=StripAbsentValues()).tolist() == list(range(25))
    assert run(keep_incomplete_batch=False).tolist() == list(range(20))


def test_minibatches_are_joined_in_order_with_many_workers():
    p = SequentialQueuedPipeline([("a", 4, MultiplyByN(2)), ("b", 3, MultiplyByN(5))], batch_size=3)
    assert p.transform(np.arange(300)).tolist() == [10 * x for x in range(300)]


def test_use_processes_gives_the_same_result():
    p = SequentialQueuedPipeline(
        [("a", 2, MultiplyByN(2)), ("b", MultiplyByN(3))],
        batch_size=8,
        use_processes=True,
        use_savers=True,
        keep_incomplete_batch=False,
    )
    assert p.transform(DATA).tolist() == [6 * x for x in range(96)]
    assert {s.backend for s in p.report.stages if s.name in "ab"} == {"process"}


def test_feature_union_branches_see_every_minibatch():
    p = ParallelQueuedFeatureUnion(
        [("double", 2, MultiplyByN(2)), ("triple", MultiplyByN(3)), ("same", Identity())],
        batch_size=4,
    )
    out = p.transform(list(range(12))).tolist()
    xs = list(range(12))
    assert out == [2 * x for x in xs] + [3 * x for x in xs] + xs


class Join(BaseStep):
    def transform(self, data_inputs):
        return data_inputs


def test_data_joiner_gets_the_minibatch_outputs():
    p = SequentialQueuedPipeline([MultiplyByN(2)], batch_size=2, data_joiner=Join())
    assert p.transform([1, 2, 3]) == [[2, 4], [6, None]]
    union = ParallelQueuedFeatureUnion(
        [MultiplyByN(2), MultiplyByN(3)], batch_size=2, data_joiner=Join()
    )
    assert union.transform([1, 2]) == [[[2, 4]], [[3, 6]]]


class FailOn(NonFittableMixin, BaseStep):
    def __init__(self, bad):
        BaseStep.__init__(self)
        NonFittableMixin.__init__(self)
        self.bad = bad

    def transform(self, data_inputs):
        if self.bad in data_inputs:
            raise ValueError(f"cannot take {self.bad}")
        return data_inputs


@pytest.mark.parametrize("use_processes", [False, True])
def test_a_failing_step_raises_its_error_with_a_MinibatchError(use_processes):
    p = SequentialQueuedPipeline(
        [("fine", Identity()), ("picky", 2, FailOn(13))],
        batch_size=5,
        use_processes=use_processes,
    )
    with pytest.raises(ValueError, match="cannot take 13") as info:
        p.transform(DATA)
    record = info.value.minibatch_error
    assert isinstance(record, MinibatchError) and record.is_error()
    assert record.step_name == "picky"
    assert list(record.minibatch) == [10, 11, 12, 13, 14]
    assert "in transform" in record.traceback_msg
    assert record.get_err() is info.value


class Chatty(NonFittableMixin, BaseStep):
    def transform(self, data_inputs):
        logging.getLogger("user.step").warning("minibatch of %d", len(data_inputs))
        return data_inputs


@pytest.mark.parametrize("use_processes", [False, True])
def test_log_records_of_workers_reach_the_parent_handlers(caplog, use_processes):
    p = SequentialQueuedPipeline(
        [("chatty", 2, Chatty())], batch_size=25, use_processes=use_processes
    )
    with caplog.at_level(logging.WARNING, logger="user.step"):
        p.transform(DATA)
    assert [r.getMessage() for r in caplog.records if r.name == "user.step"] == [
        "minibatch of 25"
    ] * 4


class Mean(BaseStep):
    """A fittable step: subtracts the mean seen by fit."""

    def fit(self, data_inputs, expected_outputs=None):
        self.mean = sum(data_inputs) / len(data_inputs)
        return self

    def transform(self, data_inputs):
        return [x - self.mean for x in data_inputs]


def test_fit_transform_fits_steps_in_order_and_returns_the_pipeline():
    p = SequentialQueuedPipeline([MultiplyByN(2), Mean()], batch_size=2)
    fitted, out = p.fit_transform([1, 2, 3])
    assert fitted is p and list(out) == [-2.0, 0.0, 2.0]
    assert p.transform([1, 2]).tolist() == [-2.0, 0.0]


def test_non_fittable_pipelines_fit_transform_in_parallel_and_stand_ins_work():
    p = QueuedPipeline([Identity()], batch_size=2)
    fitted, out = p.fit_transform([5, 6])
    assert fitted is p and out.tolist() == [5, 6]
    step, values = MultiplyByN(3).fit_transform([1, 2])
    assert values == [3, 6] and isinstance(step, MultiplyByN)
    with pytest.raises(NotImplementedError):
        BaseStep().transform([1])


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        SequentialQueuedPipeline([Identity()], batch_size=0)
    with pytest.raises(ValueError, match="steps"):
        SequentialQueuedPipeline([], batch_size=1)
    with pytest.raises(ValueError, match="1 to 5"):
        SequentialQueuedPipeline([("a", 1, 2, 3, 4, Identity())], batch_size=1)
    with pytest.raises(TypeError, match="transform"):
        SequentialQueuedPipeline([("a", object())], batch_size=1)
    with pytest.raises(ValueError, match="n_workers"):
        SequentialQueuedPipeline([("a", 0, Identity())], batch_size=1)
    assert SequentialQueuedPipeline([Identity()], batch_size=3).transform([]).tolist() == []
