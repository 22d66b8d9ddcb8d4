"""Error records stay small (issue 15, finding 7): a huge exception message or traceback is cut
to a few KiB, keeping its head and its tail, in the report of skipped items and in what a
process worker sends back."""

from __future__ import annotations

import pytest

import headrace as hr
from headrace._backends._base import MAX_CROSSING_TEXT
from headrace._errors import MAX_RECORD_TEXT, cap_text, format_traceback
from headrace._records import ErrorRecord

BIG = 2 * 2**20  # characters of each message


def huge(x: int) -> int:
    if x % 2:
        raise ValueError(f"start-{x}-" + "m" * BIG + f"-end-{x}")
    return x


def test_cap_text_keeps_head_and_tail() -> None:
    text = "H" * 10_000 + "T" * 10_000
    capped = cap_text(text, 1000)
    assert capped.startswith("H" * 500) and capped.endswith("T" * 500)
    assert "19000 characters left out" in capped
    assert cap_text("short", 1000) == "short"


def test_a_record_made_with_huge_fields_is_capped() -> None:
    record = ErrorRecord("s", 1, "ValueError", "x" * 10**6, "y" * 10**6)
    assert len(record.message) < MAX_RECORD_TEXT + 100
    assert len(record.traceback) < MAX_RECORD_TEXT + 100


def test_format_traceback_is_capped_and_ends_with_the_message() -> None:
    try:
        huge(1)
    except ValueError as exc:
        text = format_traceback(exc)
    assert len(text) < MAX_RECORD_TEXT + 100
    assert text.startswith("Traceback") and text.rstrip().endswith("-end-1")


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_skipped_items_with_huge_messages_leave_a_small_report(backend: str) -> None:
    stream = hr.from_iterable(range(10)).map(huge, workers=2, backend=backend, on_error="skip")
    with stream.open() as run:
        assert sorted(run) == [0, 2, 4, 6, 8]
        report = run.report()
    errors = report.to_dict()["errors"]
    assert sorted(e["index"] for e in errors) == [1, 3, 5, 7, 9]
    for e in errors:
        assert e["type"] == "ValueError"
        assert len(e["message"]) <= MAX_RECORD_TEXT + 100
        assert len(e["traceback"]) <= MAX_RECORD_TEXT + 100
        assert e["message"].startswith(f"start-{e['index']}-")
        assert e["traceback"].startswith("Traceback")
        assert e["traceback"].rstrip().endswith(f"-end-{e['index']}")  # the tail is kept


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_raised_huge_error_keeps_its_message_and_a_capped_worker_traceback(backend: str) -> None:
    with pytest.raises(ValueError) as info:
        hr.from_iterable([1]).map(huge, backend=backend).collect()
    assert str(info.value).startswith("start-1-")  # its type, head and tail are kept
    assert str(info.value).endswith("-end-1")
    assert len(str(info.value.__cause__)) < MAX_RECORD_TEXT + 200


def test_a_huge_message_crosses_from_a_process_cut_to_its_head_and_tail() -> None:
    """What crosses the pipe is capped (a 100 MB message would take seconds to pickle and
    send): the error keeps its type, and its message keeps head and tail."""
    with pytest.raises(ValueError) as info:
        hr.from_iterable([1]).map(huge, backend="process").collect()
    message = str(info.value)
    assert len(message) <= MAX_CROSSING_TEXT + 100
    assert "characters left out" in message
    assert message.startswith("start-1-") and message.endswith("-end-1")


def bad(x: int) -> int:
    raise KeyError(x)


def test_a_workers_traceback_starts_at_the_users_function() -> None:
    stream = hr.from_iterable(range(3)).map(bad, backend="thread", on_error="skip")
    with stream.open() as run:
        assert list(run) == []
        records = run.report().to_dict()["errors"]
    text = records[0]["traceback"]
    assert text.splitlines()[1].startswith(f'  File "{__file__}"'), text  # the first frame
    assert "in bad" in text and "raise KeyError(x)" in text
    assert "headrace" + "/_backends" not in text.replace("\\", "/")


def test_headraces_frames_are_kept_when_asked_or_when_there_are_no_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from headrace import _errors

    caught: list[BaseException] = []

    def keep(x: int) -> int:
        try:
            return bad(x)
        except KeyError as exc:
            caught.append(exc)  # its traceback grows as it goes up through headrace's loop
            raise

    hr.from_iterable(range(1)).map(keep, backend="thread", on_error="skip").run()
    assert "_backends" not in format_traceback(caught[0])
    monkeypatch.setenv(_errors.FULL_TRACEBACKS_ENV, "1")
    assert "_backends" in format_traceback(caught[0])
    monkeypatch.delenv(_errors.FULL_TRACEBACKS_ENV)
    try:
        hr.from_iterable(range(3)).map(abs, workers=0)
    except ValueError as exc:
        own = exc.with_traceback(exc.__traceback__.tb_next if exc.__traceback__ else None)
    text = format_traceback(own)  # only headrace's frames: all kept
    assert "_stages.py" in text.replace("\\", "/") and __file__ not in text
