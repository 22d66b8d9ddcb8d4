"""headrace.compat.bigmultipipe: the seed's examples, with only the import line changed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from headrace.compat.bigmultipipe import BigMultiPipe, multi_logging, no_outfile, prune_pout

#: What the seed's examples print, rejected file 2 pruned (input, output, metadata).
EXPECTED = [
    (f"big_array_{i}.npy", f"big_array_{i}_bmp.npy", {"median": v, "average": v})
    for i, v in [
        (0, 0.0),
        (1, 10.0),
        (3, 35.0),
        (4, 40.0),
        (5, 50.0),
        (6, 60.0),
        (7, 70.0),
        (8, 80.0),
        (9, 90.0),
    ]
]


def make_files(folder: Path) -> list[str]:
    names = []
    for i in range(10):
        name = os.path.join(folder, f"big_array_{i}.npy")
        np.save(name, i + np.zeros((20, 30)))
        names.append(name)
    return names


def pretty(pout: Any, in_names: list[str]) -> list[Any]:
    pruned_pout, pruned_in_names = prune_pout(pout, in_names)
    pruned_outnames, pruned_meta = zip(*pruned_pout, strict=True)
    return list(
        zip(
            [os.path.basename(f) for f in pruned_in_names],
            [os.path.basename(f) for f in pruned_outnames],
            pruned_meta,
            strict=True,
        )
    )


class DemoMultiPipe1(BigMultiPipe):
    def file_read(self, in_name: str, **kwargs: Any) -> Any:
        return np.load(in_name)

    def file_write(self, data: Any, outname: str, **kwargs: Any) -> str:
        np.save(outname, data)
        return outname

    def data_process_meta_create(
        self,
        data: Any,
        reject_value: Any = None,
        boost_target: Any = None,
        boost_amount: Any = 0,
        **kwargs: Any,
    ) -> Any:
        if reject_value is not None and data[0, 0] == reject_value:
            return (None, {})
        boost = boost_target is not None and data[0, 0] == boost_target
        data = data * 10
        if boost:
            data = data + boost_amount
        return (data, {"median": np.median(data), "average": np.average(data)})


def reject(data: Any, reject_value: Any = None, **kwargs: Any) -> Any:
    if reject_value is not None and data[0, 0] == reject_value:
        return None
    return data


def boost_later(
    data: Any, boost_target: Any = None, boost_amount: Any = None, **kwargs: Any
) -> Any:
    if boost_target is None or boost_amount is None:
        return data
    if data[0, 0] == boost_target:
        return {"bmp_data": data, "bmp_kwargs": {"need_to_boost_by": boost_amount}}
    return data


def later_booster(data: Any, need_to_boost_by: Any = None, **kwargs: Any) -> Any:
    if need_to_boost_by is not None:
        data = data + need_to_boost_by
    return data


def median(data: Any, bmp_meta: Any = None, **kwargs: Any) -> Any:
    if bmp_meta is not None:
        bmp_meta["median"] = np.median(data)
    return data


def average(data: Any, bmp_meta: Any = None, **kwargs: Any) -> Any:
    if bmp_meta is not None:
        bmp_meta.update({"average": np.average(data)})
    return data


class DemoMultiPipe2(BigMultiPipe):
    def file_read(self, in_name: str, **kwargs: Any) -> Any:
        return np.load(in_name)

    def file_write(self, data: Any, outname: str, **kwargs: Any) -> str:
        np.save(outname, data)
        return outname

    def data_process(self, data: Any, **kwargs: Any) -> Any:
        return data * 10


@pytest.mark.parametrize("num_processes", [None, 1])
def test_example_1_data_process_meta_create(tmp_path: Path, num_processes: Any) -> None:
    in_names = make_files(tmp_path)
    dmp = DemoMultiPipe1(boost_target=3, outdir=str(tmp_path), num_processes=num_processes)
    pout = dmp.pipeline(in_names, reject_value=2, boost_amount=5)
    assert pretty(pout, in_names) == EXPECTED
    np.testing.assert_array_equal(
        np.load(tmp_path / "big_array_3_bmp.npy"), np.full((20, 30), 35.0)
    )


def test_example_2_pre_and_post_process_lists(tmp_path: Path) -> None:
    in_names = make_files(tmp_path)
    dmp = DemoMultiPipe2(
        pre_process_list=[reject, boost_later],
        post_process_list=[later_booster, median, average],
        boost_target=3,
        outdir=str(tmp_path),
    )
    pout = dmp.pipeline(in_names, reject_value=2, boost_amount=5)
    assert pretty(pout, in_names) == EXPECTED


def test_no_outfile_keeps_metadata_and_writes_nothing(tmp_path: Path) -> None:
    in_names = make_files(tmp_path)[:2]
    out = tmp_path / "out"
    dmp = DemoMultiPipe2(
        post_process_list=[median, no_outfile], outdir=str(out), create_outdir=True
    )
    pout = dmp.pipeline(in_names)
    assert pout == [(None, {"median": 0.0}), (None, {"median": 10.0})]
    assert not [p for p in os.listdir(out) if p.endswith(".npy")]


def test_a_failing_file_does_not_stop_the_others(tmp_path: Path) -> None:
    in_names = make_files(tmp_path)[:3]
    Path(in_names[1]).write_bytes(b"corrupt")

    def log_it(data: Any, bmp_meta: Any = None, **kwargs: Any) -> Any:
        multi_logging("info", bmp_meta, "seen")
        return data

    pout = DemoMultiPipe2(post_process_list=[log_it], outdir=str(tmp_path)).pipeline(in_names)
    assert pout[0][1] == {"info": ["seen"]} and pout[2][0] is not None
    assert pout[1][0] is None and "error" in pout[1][1]
    assert len(prune_pout(pout, in_names)[0]) == 3  # a failure is not pruned as a rejection


def test_outdir_must_exist_unless_created(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="create_outdir"):
        DemoMultiPipe2(outdir=str(tmp_path / "missing")).pipeline(make_files(tmp_path)[:1])
