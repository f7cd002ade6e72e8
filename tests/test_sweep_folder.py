"""Output folders of resumable sweeps (immunize, tradeoff): resume the same sweep, refuse others."""

import json

import pytest

from unlearnable.errors import UnlearnableError
from unlearnable.runs import claim_sweep_folder


def test_same_sweep_resumes_and_keeps_its_finished_pieces(tmp_path):
    out = tmp_path / "sweep"
    h = claim_sweep_folder(out, kind="unlearnable-tradeoff", config={"seeds": [0]}, overwrite=False)
    assert json.loads((out / "run.json").read_text())["config_hash"] == h
    (out / "points.jsonl").write_text('{"done": 1}\n')
    assert claim_sweep_folder(out, kind="unlearnable-tradeoff", config={"seeds": [0]}, overwrite=False) == h
    assert (out / "points.jsonl").is_file()


def test_a_different_sweep_is_refused_unless_overwrite_which_discards_old_pieces(tmp_path):
    out = tmp_path / "sweep"
    claim_sweep_folder(out, kind="unlearnable-tradeoff", config={"seeds": [0]}, overwrite=False)
    (out / "points.jsonl").write_text('{"done": 1}\n')
    with pytest.raises(UnlearnableError, match="different"):
        claim_sweep_folder(out, kind="unlearnable-tradeoff", config={"seeds": [1]}, overwrite=False)
    with pytest.raises(UnlearnableError, match="different"):
        claim_sweep_folder(out, kind="unlearnable-immunize", config={"seeds": [0]}, overwrite=False)
    claim_sweep_folder(out, kind="unlearnable-tradeoff", config={"seeds": [1]}, overwrite=True)
    assert not (out / "points.jsonl").exists()  # old points must not leak into the new sweep


def test_a_folder_with_other_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UnlearnableError, match="already holds files"):
        claim_sweep_folder(tmp_path, kind="unlearnable-immunize", config={}, overwrite=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"
