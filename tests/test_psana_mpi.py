"""The psana2 source reading a run by experiment, run number and folder, as the facility does: offline, in one
process, and under ``mpirun -n 4`` with psana's own MPI distribution (rank 0 small data, rank 1 event builder,
ranks 2 and 3 big data), through ``beamstream produce``'s MPI launch path into a real consumer; and as the request
service's catalogue hands it out for a run with small data.

The run is made by the psana wheel's own ``xtcwriter`` (big data; experiment xpptut15, run 14) and ``smdwriter``
(small data) in the LCLS-II layout: ``xtc/xpptut15-r0014-s000-c000.xtc2`` and
``xtc/smalldata/xpptut15-r0014-s000-c000.smd.xtc2``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pydantic
import pytest
from conftest import psana_program, wait_until
from fastapi.testclient import TestClient
from servicekit import AsUser, run_service, shown, stop_service

from beamstream.client import Client
from beamstream.errors import SourceError
from beamstream.service.app import create_app
from beamstream.service.catalogue import Catalogue
from beamstream.service.requesting import with_run_files
from beamstream.service.settings import ServiceSettings
from beamstream.sources.psana2 import Psana2Source
from beamstream.sources.psana_runs import distributed

EVENTS = 120
FIELDS = {"image": "xppcspad.raw.raw", "motor": "motor1"}
RUN = {"exp": "xpptut15", "run": 14}


@pytest.fixture(scope="module")
def run_dir(psana, tmp_path_factory) -> Path:
    """The xtc folder of run 14 of xpptut15 (``EVENTS`` events), big and small data, in the LCLS-II layout."""
    folder = tmp_path_factory.mktemp("xpptut15") / "xtc"
    (folder / "smalldata").mkdir(parents=True)
    big = folder / "xpptut15-r0014-s000-c000.xtc2"
    subprocess.run([psana_program(psana, "xtcwriter"), "-f", str(big), "-n", str(EVENTS)], check=True,
                   capture_output=True)
    subprocess.run([psana_program(psana, "smdwriter"), "-f", str(big), "-o",
                    str(folder / "smalldata" / "xpptut15-r0014-s000-c000.smd.xtc2")], check=True, capture_output=True)
    return folder


def direct_read(psana, run_dir: Path) -> dict[int, dict[str, np.ndarray]]:
    """Every event's FIELDS by timestamp, read with psana directly from the big-data file, in run order."""
    run = next(psana.DataSource(files=str(run_dir / "xpptut15-r0014-s000-c000.xtc2"), skip_calib_load="all").runs())
    cspad, motor = run.Detector("xppcspad"), run.Detector("motor1")
    return {evt.timestamp: {"image": cspad.raw.raw(evt), "motor": motor(evt)} for evt in run.events()}


@pytest.mark.psana
def test_exp_run_dir_is_read_offline_in_one_process(psana, run_dir):
    """No SLAC logbook: the run is found on disk, every event in run order, equal to psana's read of the file."""
    reader = Psana2Source(**RUN, dir=run_dir, fields=FIELDS).open()
    batches = list(reader.read(reader.partition(0, 1)))
    expected = direct_read(psana, run_dir)
    assert [int(batch.seq[0]) for batch in batches] == list(range(EVENTS))
    assert [int(batch.data["timestamp"][0]) for batch in batches] == list(expected)
    for batch in batches:
        wanted = expected[int(batch.data["timestamp"][0])]
        np.testing.assert_array_equal(batch.data["image"][0], wanted["image"])
        assert batch.data["motor"][0] == wanted["motor"]
    metadata = reader.metadata()
    assert (metadata.experiment, metadata.run, metadata.instrument) == ("xpptut15", 14, "XPP")


@pytest.mark.psana
def test_max_events_counts_from_the_start_of_the_run(psana, run_dir):
    reader = Psana2Source(**RUN, dir=run_dir, fields=FIELDS, max_events=7).open()
    assert [int(batch.seq[0]) for batch in reader.read(reader.partition(0, 1))] == list(range(7))


@pytest.mark.psana
@pytest.mark.parametrize(("options", "text"), [
    ({"run": 15}, r"no small data of run 15 of xpptut15 in .*xpptut15-r0015-s\*\.smd\.xtc2 \(found there: "
                  r"xpptut15-r0014-s000-c000\.smd\.xtc2\); fix exp:, run: or dir:"),
    ({"exp": "mfx123"}, r"no small data of run 14 of mfx123 in .*fix exp:, run: or dir:"),
    ({"dir": "/no/such/folder"}, r"dir '/no/such/folder' is not a folder; fix dir: in the spec"),
])
def test_a_run_that_is_not_there_is_a_clear_error(psana, run_dir, options, text):
    with pytest.raises(SourceError, match=text):
        Psana2Source(**{**RUN, "dir": run_dir, **options}, fields=FIELDS).open()


@pytest.mark.psana
def test_small_data_without_its_big_data_is_a_clear_error(psana, run_dir, tmp_path):
    (tmp_path / "smalldata").mkdir()
    shutil.copy(run_dir / "smalldata" / "xpptut15-r0014-s000-c000.smd.xtc2", tmp_path / "smalldata")
    with pytest.raises(SourceError, match=r"has no big-data file .*xpptut15-r0014-s000-c000\.xtc2 beside it"):
        Psana2Source(**RUN, dir=tmp_path, fields=FIELDS).open()


@pytest.mark.parametrize(("options", "text"), [
    ({"exp": "xpptut15"}, "name the data: files: .*or exp: and run:"),
    ({"files": ["a.xtc2"], "dir": "/d"}, "dir: options of a run read by exp: and run:, not of files:"),
    ({"files": ["a.xtc2"], "batch_size": 4}, "batch_size: options of a run read by exp: and run:"),
])
def test_spec_names_files_or_a_run(options, text):
    with pytest.raises(pydantic.ValidationError, match=text):
        Psana2Source(**options, fields=FIELDS)


def test_too_few_mpi_ranks_for_psana_to_share_the_run_out_are_refused():
    source = Psana2Source(**RUN, dir="/d", fields=FIELDS)
    assert not distributed(source, {})
    assert distributed(source, {"PMI_RANK": "0", "PMI_SIZE": "3"})
    with pytest.raises(SourceError, match="needs 3 ranks or more; this launch has 2: run it with mpirun -n 1 or -n 3"):
        distributed(source, {"PMI_RANK": "0", "PMI_SIZE": "2"})
    with pytest.raises(SourceError, match="needs 4 ranks or more; this launch has 3"):
        distributed(source.model_copy(update={"eb_nodes": 2}),
                    {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "3"})
    assert not distributed(Psana2Source(files=["a.xtc2"], fields=FIELDS), {"PMI_RANK": "0", "PMI_SIZE": "4"})
    with pytest.raises(SourceError, match="PS_SRV_NODES asks psana for small-data server ranks.*unset PS_SRV_NODES"):
        distributed(source, {"PMI_RANK": "0", "PMI_SIZE": "4", "PS_SRV_NODES": "1"})


def catalogue_root(root: Path, run_dir: Path) -> Path:
    """``root`` made an ``xtc_root`` holding the run: ``root/xpp/xpptut15`` links to the run's experiment folder."""
    (root / "xpp").mkdir(parents=True)
    (root / "xpp" / "xpptut15").symlink_to(run_dir.parent)
    return root


@pytest.mark.psana
def test_the_catalogue_hands_psana_the_run_where_it_has_small_data(run_dir, tmp_path):
    """A run with small data is read by exp, run and dir (and the job may read that folder); one without, by files."""
    root = catalogue_root(tmp_path / "lcls", run_dir)
    found = Catalogue(root).find("xpptut15", 14)
    assert found.dir == str(root / "xpp" / "xpptut15" / "xtc")
    source = with_run_files({"source": {"fields": FIELDS}}, found)["source"]
    assert source == {"fields": FIELDS, "type": "psana2", "dir": found.dir, "exp": "xpptut15", "run": 14}
    plain = tmp_path / "plain" / "xpp" / "xpptut15" / "xtc"
    plain.mkdir(parents=True)
    shutil.copy(run_dir / "xpptut15-r0014-s000-c000.xtc2", plain)
    without = Catalogue(tmp_path / "plain").find("xpptut15", 14)
    assert without.dir is None
    assert with_run_files({"source": {"fields": FIELDS}}, without)["source"]["files"] == without.files


@pytest.mark.psana
def test_a_request_by_experiment_and_run_reads_the_run_by_exp_run_and_dir(run_dir, tmp_path):
    """Through the service, as a user under a policy: the stream stored reads the run's folder by exp, run and
    dir, which the user may make the job read; another folder stays refused."""
    root = catalogue_root(tmp_path / "lcls", run_dir)
    (tmp_path / "policy.yaml").write_text("admins: [carol]\nreaders:\n  alice: [xpptut15]\n")
    app = create_app(ServiceSettings(database_url=f"sqlite:///{tmp_path / 'service.db'}", xtc_root=root,
                                     policy_file=tmp_path / "policy.yaml", state_dir=tmp_path / "state"))
    request = {"spec": {"source": {"fields": FIELDS}}, "experiment": "xpptut15", "run": 14}
    with TestClient(AsUser(app)) as api:
        made = api.post("/v1/streams", json=request, headers={"X-Test-User": "alice"})
        assert made.status_code == 201, made.text
        source = app.state.context.store.get(made.json()["id"]).spec["source"]
        assert source == {"fields": FIELDS, "type": "psana2", "dir": str(root / "xpp" / "xpptut15" / "xtc"),
                          "exp": "xpptut15", "run": 14}
        elsewhere = {**request, "spec": {"source": {"fields": FIELDS, "dir": str(tmp_path)}}}
        refused = api.post("/v1/streams", json=elsewhere, headers={"X-Test-User": "alice"})
        assert refused.status_code == 403 and "spec.source.dir: you may not make a job read" in refused.text
    app.state.context.store.close()


@pytest.mark.psana
def test_the_service_streams_a_run_with_small_data_by_exp_run_and_dir(psana, run_dir, tmp_path):
    """A stream asked for by experiment and run, run by the service's local executor: every event, in run order
    (one local worker), equal to psana's own read, and the description's experiment and run."""
    root = catalogue_root(tmp_path / "lcls", run_dir)
    service, url = run_service(tmp_path, xtc_root=str(root), drain_grace_s="1", executor="local",
                               executors='["local"]')
    try:
        stream = httpx.post(f"{url}/v1/streams", json={"spec": {"source": {"fields": FIELDS}},
                                                       "experiment": "xpptut15", "run": 14}, timeout=30).json()
        wait_until(lambda: shown(url, stream["id"])["state"] == "running", "the stream to run", timeout=60)
        with Client(shown(url, stream["id"])["endpoints"]["consumers"], group="g", timeout=60,
                    key=stream["credentials"]["key"]) as client:
            events = list(client.events())
        expected = direct_read(psana, run_dir)
        assert [int(event.data["timestamp"][()]) for event in events] == list(expected)
        for event in events:
            np.testing.assert_array_equal(event.data["image"], expected[int(event.data["timestamp"][()])]["image"])
        assert client.metadata.experiment == "xpptut15" and client.metadata.run == 14
        wait_until(lambda: shown(url, stream["id"])["state"] == "completed", "the stream to complete", timeout=60)
    finally:
        stop_service(service, url)


def produce_environment() -> dict[str, str]:
    """This environment without the ``PS_PARALLEL=none`` the psana fixture set (it would keep psana serial)."""
    return {name: value for name, value in os.environ.items() if name != "PS_PARALLEL"}


def mpirun() -> str:
    found = Path(sys.executable).parent / "mpirun"
    if found.exists() or shutil.which("mpirun"):
        return str(found if found.exists() else shutil.which("mpirun"))
    pytest.skip("mpirun not installed (pip install 'beamstream[mpi]')")


@pytest.mark.psana
@pytest.mark.mpi
@pytest.mark.parametrize("max_events", [None, 47])
def test_mpirun_4_psana_shares_the_run_out_every_event_once_bit_exact(psana, run_dir, write_spec, tmp_path,
                                                                      max_events):
    """``mpirun -n 4 beamstream produce``: psana's ranks 2 and 3 produce, each event exactly once (with
    ``max_events``, the run's first ones, counted over all ranks), every array equal to psana's direct read, and
    the consumer's account complete (ranks 0 and 1 end with none)."""
    endpoint = f"ipc://{tmp_path / 'stream'}"
    spec = write_spec({"source": {"type": "psana2", **RUN, "dir": str(run_dir), "fields": FIELDS,
                                  "batch_size": 5, "smd_n_events": 10, "max_events": max_events},
                       "sinks": [{"type": "stream", "endpoint": endpoint}]})
    command = [mpirun(), "-n", "4", sys.executable, "-m", "beamstream.cli", "produce", str(spec)]
    outcome: dict = {}
    with Client(endpoint, bind=True, timeout=120) as client:
        runner = threading.Thread(target=lambda: outcome.setdefault(
            "run", subprocess.run(command, capture_output=True, text=True, timeout=300, env=produce_environment())))
        runner.start()
        events = list(client.events())
        runner.join()
    assert outcome["run"].returncode == 0, outcome["run"].stderr
    expected = dict(list(direct_read(psana, run_dir).items())[:max_events or EVENTS])
    timestamps = [int(event.data["timestamp"][()]) for event in events]
    assert len(timestamps) == len(expected) and sorted(timestamps) == sorted(expected)  # every event, exactly once
    for event, timestamp in zip(events, timestamps):
        np.testing.assert_array_equal(event.data["image"], expected[timestamp]["image"])
        assert event.data["image"].dtype == expected[timestamp]["image"].dtype
        assert event.data["motor"] == expected[timestamp]["motor"]
        assert event.seq % 4 == event.rank  # each big-data rank's events are its round-robin share
    assert {event.rank for event in events} <= {2, 3}
    report = client.report
    assert report.complete and report.producers == 4 and report.ended == [0, 1, 2, 3], report.summary()
    assert report.missing_events == 0 and report.events == len(expected)

@pytest.mark.psana
@pytest.mark.mpi
def test_mpirun_4_a_rank_that_fails_ends_the_run_instead_of_leaving_psana_waiting(run_dir, write_spec, tmp_path):
    """The EPICS variable has no value in the run's first events: the big-data ranks given them fail, end psana's
    distribution early, and the job ends, naming the failure, instead of hanging."""
    spec = write_spec({"source": {"type": "psana2", **RUN, "dir": str(run_dir), "batch_size": 2,
                                  "fields": {**FIELDS, "pmon": "HX2:DVD:GCC:01:PMON"}},
                       "sinks": [{"type": "files", "dir": str(tmp_path / "out")}]})
    result = subprocess.run([mpirun(), "-n", "4", sys.executable, "-m", "beamstream.cli", "produce", str(spec)],
                            capture_output=True, text=True, timeout=120,
                            env=produce_environment())
    assert result.returncode != 0
    assert "has no data for field 'pmon' (HX2:DVD:GCC:01:PMON); set on_missing: skip" in result.stderr + result.stdout


@pytest.mark.psana
@pytest.mark.mpi
def test_mpirun_4_a_rank_whose_sink_fails_before_reading_lets_the_others_end(run_dir, write_spec, tmp_path):
    """Rank 3 cannot bind its endpoint (a folder is in the way), so it never reads its part of the run: it ends
    psana's distribution early (``abandon``), and the job ends, naming the failure, instead of psana's other ranks
    waiting for it forever."""
    endpoint = tmp_path / "stream"
    (tmp_path / "stream-3").mkdir()  # where rank 3 would bind
    spec = write_spec({"source": {"type": "psana2", **RUN, "dir": str(run_dir), "fields": FIELDS, "batch_size": 2},
                       "sinks": [{"type": "stream", "endpoint": f"ipc://{endpoint}", "bind": True, "pattern": "pub",
                                  "send_timeout_s": 5}]})  # no subscriber: the others give up their end at once
    result = subprocess.run([mpirun(), "-n", "4", sys.executable, "-m", "beamstream.cli", "produce", str(spec)],
                            capture_output=True, text=True, timeout=120, env=produce_environment())
    assert result.returncode != 0
    assert "worker 3 failed" in result.stdout + result.stderr, result.stdout + result.stderr
