"""Every path a request makes a job open is granted or refused before anything runs (issue 17, item 1).

alice may read experiment xpptut15 only, bob cxi12345 only, carol is an admin. The service's catalogue has a run
of each experiment (HDF5) and each experiment's calibration folder; bob's run file is what alice must never get.
"""

from __future__ import annotations

import os
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Literal

import h5py
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

import beamstream.plugins
from beamstream.service.app import create_app
from beamstream.service.job_paths import output_file, output_files
from beamstream.service.settings import ServiceSettings
from beamstream.spec import parse_spec, spec_model
from beamstream.spec_paths import ReadPath, ReadPattern, WritePath, paths_opened
from beamstream.stages import StepSpec
from conftest import wait_until
from servicekit import AsUser, shown, start_service, stop_service

POLICY = "admins: [carol]\nreaders:\n  alice: [xpptut15]\n  bob: [cxi12345]\n"
SIMULATED = {"type": "simulated", "n_events": 4, "detectors": [{"kind": "image", "shape": [4, 4]}]}


@pytest.fixture
def site(tmp_path) -> Path:
    """A facility's data: a run and a calibration folder per experiment."""
    for experiment in ("xpptut15", "cxi12345"):
        run = tmp_path / "data" / experiment / "r0007"
        run.mkdir(parents=True)
        with h5py.File(run / "a.h5", "w") as file:
            file["entry_1/data_1/data"] = np.arange(4 * 16, dtype=np.uint16).reshape(4, 4, 4)
        calib = tmp_path / "data" / experiment / "calib"
        calib.mkdir()
        np.save(calib / "pedestal.npy", np.zeros((4, 4), np.float32))
    (tmp_path / "policy.yaml").write_text(POLICY)
    return tmp_path


@pytest.fixture
def api(site):
    app = create_app(ServiceSettings(
        database_url=f"sqlite:///{site / 'service.db'}", policy_file=site / "policy.yaml", state_dir=site / "state",
        hdf5_pattern=str(site / "data" / "{experiment}" / "r{run:04d}" / "*.h5"),
        calib_pattern=str(site / "data" / "{experiment}" / "calib")))
    with TestClient(AsUser(app)) as client:
        yield client
    app.state.context.store.close()


def post(api: TestClient, user: str, spec: dict, **request):
    return api.post("/v1/streams", json={"spec": spec, **request}, headers={"X-Test-User": user})


def pedestal_step(file: str, dataset: str | None = None) -> dict:
    return {"type": "calibrate", "field": "image", "pedestal": {"file": file, **({"dataset": dataset} if dataset else {})}}


def streams(api: TestClient, user: str) -> list[dict]:
    return api.get("/v1/streams", headers={"X-Test-User": user}).json()["items"]


def test_the_attack_through_a_constants_file_is_refused_before_anything_runs(api, site):
    """alice's simulated stream with bob's run file as a pedestal (gain 0 first, so the stream would carry bob's array
    exactly): 403 naming the place in the request, nothing made, and nothing said about bob's file."""
    bobs = str(site / "data" / "cxi12345" / "r0007" / "a.h5")
    spec = {"source": SIMULATED, "steps": [{"type": "calibrate", "field": "image", "gain": 0},
                                           pedestal_step(bobs, "/entry_1/data_1/data")]}
    for experiment in (None, "xpptut15"):
        refused = post(api, "alice", spec, **({"experiment": experiment} if experiment else {}))
        assert refused.status_code == 403, refused.text
        [problem] = refused.json()["detail"]
        assert problem.startswith(f"spec.steps[1].pedestal.file: you may not make a job read {bobs!r}")
        assert "(4, 4, 4)" not in refused.text and "exist" not in refused.text and "uint16" not in refused.text
    for secret in ("/etc/passwd.npy", "/etc/shadow.h5", str(site / "state" / "ca" / "ca.key.npy")):
        assert post(api, "alice", {"source": SIMULATED, "steps": [pedestal_step(secret, "/x" if secret.endswith(".h5") else None)]},
                    experiment="xpptut15").status_code == 403
    assert streams(api, "alice") == []
    assert post(api, "carol", spec).status_code == 201  # an admin may name any file


def test_constants_come_from_the_experiments_own_calibration_folder_only(api, site):
    calib = site / "data" / "xpptut15" / "calib"
    own = {"source": SIMULATED, "steps": [pedestal_step(str(calib / "pedestal.npy"))]}
    assert post(api, "alice", own, experiment="xpptut15").status_code == 201
    assert post(api, "alice", own, experiment="xpptut15", run=7).status_code == 201
    assert post(api, "alice", own).status_code == 403  # no experiment: no calibration folder
    assert post(api, "bob", own, experiment="cxi12345").status_code == 403  # another experiment's folder
    (calib / "escape.npy").symlink_to(site / "data" / "cxi12345" / "calib" / "pedestal.npy")
    for path in (calib / "escape.npy", calib / ".." / ".." / "cxi12345" / "calib" / "pedestal.npy", calib / "*.npy",
                 Path("pedestal.npy"), Path("data/xpptut15/calib/pedestal.npy")):
        refused = post(api, "alice", {"source": SIMULATED, "steps": [pedestal_step(str(path))]}, experiment="xpptut15")
        assert refused.status_code == 403, (path, refused.text)
        assert "calibration folder of experiment 'xpptut15'" in refused.json()["detail"][0]


def test_run_files_are_the_catalogues_and_named_files_are_for_admins(api, site):
    catalogued = post(api, "alice", {}, experiment="xpptut15", run=7)
    assert catalogued.status_code == 201, catalogued.text
    bobs_run = {"source": {"type": "hdf5", "files": [str(site / "data" / "cxi12345" / "r0007" / "a.h5")]}}
    assert post(api, "alice", bobs_run, experiment="xpptut15", run=7).status_code == 403


def test_a_job_writes_into_its_own_streams_folder(api, site):
    """A relative files-sink folder goes under the stream's output folder; an absolute one or one that climbs out
    is refused (but for admins); so is a buffer's spill folder elsewhere."""
    def sink(folder: str) -> dict:
        return {"source": SIMULATED, "sinks": [{"type": "files", "dir": folder}]}

    created = post(api, "alice", sink("run14/images"))
    assert created.status_code == 201, created.text
    stored = api.app.app.state.context.store.get(created.json()["id"]).spec
    assert stored["sinks"] == [{"type": "files", "dir": "output/run14/images"}]
    for folder in (str(site / "elsewhere"), "~/out", "../../elsewhere", "a/../../b"):
        refused = post(api, "alice", sink(folder))
        assert refused.status_code == 403 and refused.json()["detail"][0].startswith("spec.sinks[0].dir: "), folder
    assert post(api, "carol", sink(str(site / "elsewhere"))).status_code == 201
    spilled = post(api, "alice", {"source": SIMULATED}, resources={"buffer": {"spill_dir": "/tmp/anywhere"}})
    assert spilled.status_code == 403 and spilled.json()["detail"][0].startswith("resources.buffer.spill_dir: ")
    kept = post(api, "alice", {"source": SIMULATED}, resources={"buffer": {"spill_dir": "spill"}})
    assert api.app.app.state.context.store.get(kept.json()["id"]).resources["buffer"]["spill_dir"] == "output/spill"


class ReadsAFileStep(StepSpec):
    """A facility's step, registered only in this test: it names a file and a pattern it reads, and a folder it
    writes."""

    type: Literal["reads-a-file"] = "reads-a-file"
    geometry: ReadPath
    masks: list[ReadPattern] = []
    scratch: WritePath | None = None

    def build(self):
        raise NotImplementedError("never run: the test only requests it")


class ForgetsItsMarker(StepSpec):
    type: Literal["forgets-its-marker"] = "forgets-its-marker"
    geometry: Path

    def build(self):
        raise NotImplementedError("never run")


@pytest.fixture
def facility_steps(monkeypatch):
    """Two steps registered as a facility's package would register them (entry points), in this test only."""
    registered = beamstream.plugins._registered
    extra = (EntryPoint("reads-a-file", f"{__name__}:ReadsAFileStep", "beamstream.steps"),
             EntryPoint("forgets-its-marker", f"{__name__}:ForgetsItsMarker", "beamstream.steps"))

    def with_extra(kind: str):
        return registered(kind) + (extra if kind == "steps" else ())

    for cache in (beamstream.plugins.plugin, beamstream.plugins._registered, spec_model):
        cache.cache_clear()
    monkeypatch.setattr(beamstream.plugins, "_registered", with_extra)
    yield
    monkeypatch.undo()
    for cache in (beamstream.plugins.plugin, spec_model):
        cache.cache_clear()


def test_a_facility_plugins_paths_are_checked_like_the_built_in_ones(facility_steps, api, site):
    calib = site / "data" / "xpptut15" / "calib"
    step = {"type": "reads-a-file", "geometry": str(calib / "pedestal.npy"), "masks": [str(calib / "pedestal.npy")],
            "scratch": "tmp"}
    assert post(api, "alice", {"source": SIMULATED, "steps": [step]}, experiment="xpptut15").status_code == 201
    bobs = str(site / "data" / "cxi12345" / "calib" / "pedestal.npy")
    for bad in ({"geometry": bobs}, {"masks": [str(calib / "pedestal.npy"), bobs]}, {"scratch": "/tmp/x"}):
        refused = post(api, "alice", {"source": SIMULATED, "steps": [{**step, **bad}]}, experiment="xpptut15")
        assert refused.status_code == 403, bad
        assert refused.json()["detail"][0].startswith(f"spec.steps[0].{next(iter(bad))}")
    forgot = post(api, "carol", {"source": SIMULATED, "steps": [{"type": "forgets-its-marker", "geometry": bobs}]})
    assert forgot.status_code == 403 and "does not say whether a job reads or writes it" in forgot.text


def test_every_path_of_a_built_in_plugin_is_found(tmp_path):
    spec = parse_spec({
        "source": {"type": "hdf5", "files": ["/d/a.h5", "/d/*.cxi"]},
        "steps": [{"type": "calibrate", "field": "data", "pedestal": {"file": "/c/p.npy"}, "gain": {"file": "/c/g.npy"},
                   "mask": {"file": "/c/m.h5", "dataset": "/m"}}],
        "sinks": [{"type": "files", "dir": "out"}],
        "buffer": {"spill_dir": "spill", "admission_key_file": "/k"}})
    assert [(found.where, found.path, found.mode) for found in paths_opened(spec)] == [
        ("source.files[0]", "/d/a.h5", "read"), ("source.files[1]", "/d/*.cxi", "read"),
        ("steps[0].pedestal.file", "/c/p.npy", "read"), ("steps[0].gain.file", "/c/g.npy", "read"),
        ("steps[0].mask.file", "/c/m.h5", "read"), ("sinks[0].dir", "out", "write"),
        ("buffer.spill_dir", "spill", "write"), ("buffer.admission_key_file", "/k", "read")]
    psana = parse_spec({"source": {"type": "psana2", "files": ["/x/r.xtc2"], "fields": {"image": "cspad.raw.raw"}},
                        "sinks": [{"type": "stream", "endpoint": "tcp://127.0.0.1:1"}]})
    assert [found.where for found in paths_opened(psana)] == ["source.files[0]"]


AUDIT_HOOK = '''
import os, sys

def _record(event, args, _busy=[]):
    """Append every path Python opens that names the watched folder to the log (not HDF5's C-level opens)."""
    if event != "open" or _busy or not args or isinstance(args[0], int):
        return
    path = os.fsdecode(args[0])
    if os.environ["OPEN_LOG_WATCHED"] in path:
        _busy.append(1)
        try:
            descriptor = os.open(os.environ["OPEN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(descriptor, (path + "\\n").encode())
            os.close(descriptor)
        finally:
            _busy.pop()

sys.addaudithook(_record)
'''


def test_a_real_service_never_lets_a_job_open_a_refused_file(site, tmp_path):
    """A service process and its jobs, each recording every file Python opens under the data folder (an audit hook
    in sitecustomize): alice's stream with her experiment's pedestal runs and opens it; her request with bob's
    pedestal is refused and nothing, service or job, ever opens bob's file."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(AUDIT_HOOK)
    opened = tmp_path / "opened.log"
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")])),
           "OPEN_LOG": str(opened), "OPEN_LOG_WATCHED": str(site / "data")}
    service, url = start_service(f"sqlite:///{tmp_path / 'service.db'}", tmp_path / "state", env=env,
                                 policy_file=str(site / "policy.yaml"), default_owner="alice", drain_grace_s="1",
                                 calib_pattern=str(site / "data" / "{experiment}" / "calib"))
    try:
        alices = str(site / "data" / "xpptut15" / "calib" / "pedestal.npy")
        bobs = str(site / "data" / "cxi12345" / "calib" / "pedestal.npy")
        attack = {"source": SIMULATED, "steps": [{"type": "calibrate", "field": "image", "gain": 0}, pedestal_step(bobs)]}
        refused = httpx.post(f"{url}/v1/streams", json={"spec": attack, "experiment": "xpptut15"}, timeout=30)
        assert refused.status_code == 403, refused.text
        own = {"source": SIMULATED, "steps": [pedestal_step(alices)], "sinks": [{"type": "files", "dir": "run14"}]}
        created = httpx.post(f"{url}/v1/streams", json={"spec": own, "experiment": "xpptut15"}, timeout=30)
        assert created.status_code == 201, created.text
        stream_id = created.json()["id"]
        wait_until(lambda: shown(url, stream_id)["state"] in ("completed", "failed"), "the stream to end", timeout=120)
        assert shown(url, stream_id)["state"] == "completed"
        lines = opened.read_text().splitlines()
        assert alices in lines  # the hook sees the jobs' opens
        assert not any("cxi12345" in line for line in lines), lines

        listed = httpx.get(f"{url}/v1/streams/{stream_id}/files", timeout=30).json()["files"]
        messages = [entry for entry in listed if entry["path"].endswith(".h5")]
        assert len(messages) == 4 and all(entry["path"].startswith("run14/") for entry in listed), listed
        fetched = httpx.get(f"{url}/v1/streams/{stream_id}/files/{messages[0]['path']}", timeout=30)
        written = tmp_path / "state" / "streams" / stream_id / "output" / messages[0]["path"]
        assert fetched.status_code == 200 and fetched.content == written.read_bytes()
        for outside in ("../callback.json", "run14/../../producers-spec.json", "%2E%2E/callback.json", "run14"):
            assert httpx.get(f"{url}/v1/streams/{stream_id}/files/{outside}", timeout=30).status_code == 404
    finally:
        stop_service(service, url)


def test_an_output_file_is_one_inside_the_output_folder(tmp_path):
    (tmp_path / "output" / "run").mkdir(parents=True)
    (tmp_path / "output" / "run" / "a.h5").write_bytes(b"data")
    (tmp_path / "key").write_bytes(b"secret")
    (tmp_path / "output" / "link").symlink_to(tmp_path / "key")
    assert output_file(tmp_path, "run/a.h5") == tmp_path / "output" / "run" / "a.h5"
    assert output_files(tmp_path) == [("run/a.h5", 4)]
    for outside in ("../key", "run/../../key", "link", "run", ".", "", str(tmp_path / "key")):
        assert output_file(tmp_path, outside) is None, outside
