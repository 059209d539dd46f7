"""A request's Slurm options (beamstream.protocol.slurm) and the service's defaults for them, without a cluster:
merged, written as sbatch options, refused where they cannot apply. tests/test_slurm.py has Slurm judge them."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from beamstream.protocol.slurm import SlurmOptions
from beamstream.service.settings import ServiceSettings
from servicekit import end_jobs_under, run_service, stop_service


def test_the_requests_options_go_over_the_services_defaults_for_its_experiment():
    settings = ServiceSettings(slurm_defaults={"account": "lcls:{experiment}", "qos": "low",
                                               "extra": {"constraint": "cpu"}})
    defaults = settings.slurm_options_for("xpptut15")
    asked = SlurmOptions(qos="high", exclusive=True, extra={"mem-per-cpu": "2G"})
    effective = asked.over(defaults)
    assert effective.model_dump() == {"account": "lcls:xpptut15", "partition": None, "reservation": None,
                                      "qos": "high", "gpus_per_task": None, "exclusive": True,
                                      "extra": {"constraint": "cpu", "mem-per-cpu": "2G"}}
    assert effective.sbatch() == ["--account=lcls:xpptut15", "--qos=high", "--exclusive", "--constraint=cpu",
                                  "--mem-per-cpu=2G"]
    assert SlurmOptions().over(defaults) == defaults
    assert settings.slurm_options_for(None).account == "lcls:none"


@pytest.mark.parametrize("defaults, words", [
    ({"acount": "x"}, "Extra inputs are not permitted"),
    ({"account": "lcls {experiment}"}, "should match pattern"),
    ({"extra": {"time": "10"}}, "time cannot be set there"),
])
def test_defaults_that_cannot_work_stop_the_service_at_start(defaults, words):
    with pytest.raises(ValidationError, match=words):
        ServiceSettings(slurm_defaults=defaults)


@pytest.mark.parametrize("options, words", [
    ({"partition": "a\nb"}, "should match pattern"),
    ({"qos": 'x" --wrap="sh'}, "should match pattern"),
    ({"extra": {"--output": "x"}}, "should match pattern"),
    ({"gpus_per_task": 0}, "greater than or equal to 1"),
])
def test_no_option_can_add_a_line_or_another_option_to_a_job_script(options, words):
    with pytest.raises(ValidationError, match=words):
        SlurmOptions(**options)


def test_a_local_stream_is_refused_slurm_options(tmp_path):
    service, url = run_service(tmp_path)
    try:
        refused = httpx.post(f"{url}/v1/streams", json={"spec": {"source": {"type": "simulated", "n_events": 4}},
                                                         "resources": {"slurm": {"account": "x"}}}, timeout=30)
        assert refused.status_code == 422, refused.text
        assert "sbatch options are for the slurm executor; this stream runs on local" in refused.json()["detail"]
        accepted = httpx.post(f"{url}/v1/streams", json={"spec": {"source": {"type": "simulated", "n_events": 4}}},
                              timeout=30)
        assert accepted.status_code == 201 and accepted.json()["resources"]["slurm"] is None, accepted.text
    finally:
        stop_service(service, url)
        end_jobs_under(tmp_path)  # the accepted stream's jobs, started cold if the service's warm starter was not up
