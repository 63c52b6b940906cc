"""Calibration written and read back, whatever the rule's spread and reference point: the reference policy's
mean is z = 0, the file keeps other scales, the reader gives the record's Normalisation and reference point,
and z follows each objective's direction."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from mobench import calibration
from mobench.api import MobenchError, Normalisation, TaskInstance

RESPONSES = ["one", "one two three", "a b c d e f g", "x y"]


class Words:
    name, direction = "words", -1

    def score(self, prompts, responses):
        return [float(len(r.split())) for r in responses]

    def provenance(self):
        return {"kind": "word count", "artifact": "/somewhere/local"}


class Chars:
    name, direction = "chars", 1

    def score(self, prompts, responses):
        return [float(len(r)) for r in responses]

    def provenance(self):
        return {"kind": "characters"}


def _instance(prompts=("p0", "p1", "p2", "p3")) -> TaskInstance:
    return TaskInstance(name="t", scale="tiny", policy="none", objectives=[Words(), Chars()], prompts=list(prompts),
                        normalisation={}, reference_point=())


@pytest.fixture()
def record(monkeypatch):
    monkeypatch.setattr(calibration, "reference_responses", lambda instance, device=None, seed=0, dtype=None: list(RESPONSES))
    return calibration.calibrate(_instance())


def _mean(values):
    return sum(values) / len(values)


def test_calibrate_centres_on_the_reference_responses(record):
    words = [1.0, 3.0, 7.0, 2.0]
    chars = [float(len(r)) for r in RESPONSES]
    for name, values, direction in [("words", words, -1), ("chars", chars, 1)]:
        stats = record["objectives"][name]
        assert stats["mean"] == pytest.approx(_mean(values)) and stats["std"] > 0 and stats["direction"] == direction
    assert record["objective_names"] == ["words", "chars"] and len(record["reference_point"]) == 2
    assert record["scorers"]["words"] == {"kind": "word count"}  # machine-specific paths stay out
    assert record["n_prompts"] == 4 and record["prompts_sha256"]


def test_written_and_read_back(record, tmp_path):
    path = tmp_path / "cal" / "t.json"
    calibration.write(path, "t", "paper", {**record, "objective_names": ["other"]})
    assert calibration.write(path, "t", "tiny", record) == path
    content = json.loads(path.read_text())
    assert set(content["scales"]) == {"paper", "tiny"} and content["task"] == "t"  # the other scale is kept
    assert not path.with_name(path.name + ".tmp").exists()
    inst = _instance()
    norm, ref, back = calibration.read(path, "t", "tiny", inst.prompts, inst.objective_names)
    assert norm == {n: Normalisation(record["objectives"][n]["mean"], record["objectives"][n]["std"]) for n in ("words", "chars")}
    assert ref == tuple(record["reference_point"]) and back == json.loads(json.dumps(record))
    # the reference policy's own responses average z = 0, and z follows the direction
    for objective in inst.objectives:
        z = [norm[objective.name].apply(s, objective.direction) for s in objective.score(inst.prompts, RESPONSES)]
        assert _mean(z) == pytest.approx(0.0, abs=1e-12)
    assert norm["words"].apply(1.0, -1) > 0 > norm["words"].apply(7.0, -1)  # fewer words is better
    assert norm["chars"].apply(20.0, 1) > 0 > norm["chars"].apply(2.0, 1)
    # attach: the instance gets the file's statistics and reference point, and provenance names the file
    spec = SimpleNamespace(name="t", calibration=path)
    attached = calibration.attach(spec, inst)
    assert attached.normalisation == norm and attached.reference_point == tuple(record["reference_point"]) and attached.calibrated
    assert attached.provenance["calibration_file"] == str(path)


def test_stale_or_missing_calibration_names_the_command(record, tmp_path):
    path = tmp_path / "t.json"
    calibration.write(path, "t", "tiny", record)
    with pytest.raises(MobenchError, match="stale.*mobench calibrate --task t --scale tiny"):
        calibration.read(path, "t", "tiny", ["other prompts"], ["words", "chars"])
    with pytest.raises(MobenchError, match="stale"):
        calibration.read(path, "t", "tiny", _instance().prompts, ["chars", "words"])  # the weight order matters
    with pytest.raises(MobenchError, match="no calibration for scale 'paper'"):
        calibration.read(path, "t", "paper", _instance().prompts, ["words", "chars"])
    path.write_text("{not json")
    with pytest.raises(MobenchError, match="cannot be read"):
        calibration.read(path, "t", "tiny", _instance().prompts, ["words", "chars"])


def test_a_constant_objective_cannot_be_normalised(monkeypatch):
    class Flat(Chars):
        name = "flat"

        def score(self, prompts, responses):
            return [2.0] * len(responses)

    monkeypatch.setattr(calibration, "reference_responses", lambda instance, device=None, seed=0, dtype=None: list(RESPONSES))
    inst = TaskInstance(name="t", scale="tiny", policy="none", objectives=[Flat()], prompts=["p0", "p1", "p2", "p3"],
                        normalisation={}, reference_point=())
    with pytest.raises(MobenchError, match="same score"):
        calibration.calibrate(inst)
