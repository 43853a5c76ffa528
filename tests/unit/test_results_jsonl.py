"""The one JSON-lines reader (fedkd.results.read_jsonl): finished files and files being written."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedkd.results import read_jsonl, read_metrics


def test_a_finished_file_is_read_whole_and_a_bad_line_raises(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 1}\n\n{"round": 2}')
    assert read_jsonl(path) == [{"round": 1}, {"round": 2}] == read_metrics(tmp_path)
    path.write_text('{"round": 1}\nnot json\n')
    with pytest.raises(ValueError):
        read_jsonl(path)


def test_a_growing_file_gives_its_complete_rows(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    assert read_jsonl(path, growing=True) == []  # not written yet
    path.write_text('{"round": 1}\nnot json\n\n{"round": 2}\n{"round": 3, "wall')
    assert read_jsonl(path, growing=True) == [{"round": 1}, {"round": 2}]
