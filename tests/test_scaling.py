"""benchmarks/scaling.py: the sizing arithmetic on hand-made costs, its errors, and the committed measured costs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "scaling.py"
_spec = importlib.util.spec_from_file_location("scaling", SCRIPT)
scaling = importlib.util.module_from_spec(_spec)
sys.modules["scaling"] = scaling  # dataclasses look their module up by name
_spec.loader.exec_module(scaling)


def costs_record(**stages: dict) -> dict:
    """A stage_costs.json record whose figures are round numbers; ``stages`` replace or (None) remove stages."""
    figures = {
        "producer": {"bytes_per_cpu_s": 2e9, "messages_per_cpu_s": 200},
        "client": {"bytes_per_cpu_s": 4e9, "messages_per_cpu_s": 1000},
        "buffer": {"bytes_per_cpu_s": 1e9, "messages_per_cpu_s": 1000},
        "nats": {"bytes_per_cpu_s": 1e9, "stream_bytes_per_s": 5e8},
        "relay": {"bytes_per_cpu_s": 1e9},
        "cfd": {"waveforms_per_cpu_s": 100_000, "hit_bytes_per_waveform": 68},
        "peakfinder8": {"pixels_per_cpu_s": 1e8},
    }
    record = {stage: {name: {"value": value, "units": "u"} for name, value in named.items()}
              for stage, named in figures.items()}
    for stage, replacement in stages.items():
        if replacement is None:
            del record[stage]
        else:
            record[stage] = replacement
    return {"date": "2026-12-03T15:00:00+00:00", "command": "stage_costs.py", "machine": {"cores": 2},
            "stages": record}


def sized(load, network_gbps: float = 100, node_cores: int = 64, headroom: float = 1.5, **stages):
    return scaling.size(load, network_gbps, scaling.Costs(costs_record(**stages), "hand-made"), node_cores, headroom)


# 1 GB/s in 100 messages/s: half a producer core for the bytes (2 GB/s a core), half for the messages (200/s a core)
ONE_CORE = scaling.Load("one producer core", 100, 1e7, 1)


def test_a_load_at_one_cores_rate_needs_the_headroom_rounded_up():
    assert sized(ONE_CORE, headroom=1.0).producer_ranks.count == 1  # exactly 1.0, not 1.0000000001 rounded to 2
    assert sized(ONE_CORE, headroom=1.5).producer_ranks.count == 2
    assert sized(ONE_CORE, headroom=2.0).producer_ranks.count == 2
    assert sized(ONE_CORE, headroom=2.1).producer_ranks.count == 3
    assert "⌈1.5 × (1 GB/s ÷ 2 GB/s + 100/s ÷ 200/s)⌉ = ⌈1.5⌉ = 2" in sized(ONE_CORE).producer_ranks.working


def test_the_bottleneck_is_the_network_while_the_nic_is_the_limit_and_the_cpu_after():
    load = scaling.Load("10 GB/s", 1000, 1e7, 1)  # 10 buffer cores, 1 for its messages: 11 in all
    slow = sized(load, network_gbps=25, node_cores=4)  # 10 GB/s ÷ 3.125 GB/s = 3.2 NICs; 11 cores ÷ 4 = 2.75 nodes
    assert slow.bottleneck == "network: 3.2 NICs"
    assert slow.buffer_nodes.count == 5  # ⌈1.5 × 3.2⌉
    fast = sized(load, network_gbps=400, node_cores=4)  # 0.2 NICs; 2.75 nodes of buffer CPU
    assert fast.bottleneck == "CPU of the buffer: 2.8 nodes"
    assert fast.buffer_nodes.count == 5  # ⌈1.5 × 2.75⌉ = ⌈4.125⌉
    assert sized(load, network_gbps=400, node_cores=64).bottleneck == "network: 0.2 NIC"  # 0.17 node of buffer CPU


def test_steps_nats_shards_relay_and_a_rank_per_buffer_node():
    images = scaling.Load("4 Mpix at 100 Hz", 100, 8e6, 1, consumer_step="peakfinder8", pixels=4_000_000)
    result = sized(images, network_gbps=25)  # 0.8 GB/s
    assert result.analysis_cores.count == 6  # 100/s ÷ (1e8 ÷ 4e6 = 25 images a core) = 4 cores, × 1.5
    assert result.nats_shards.count == 3  # 0.8 GB/s ÷ 0.5 GB/s a stream = 1.6, × 1.5 = 2.4
    assert result.nats_bottleneck == "one JetStream stream's rate: 1.6 streams"
    assert result.relay_instances.count == 2  # 0.8 GB/s ÷ 1 GB/s a core, × 1.5
    hits = scaling.Load("hits", 100_000, None, 250, producer_step="cfd")  # 68 bytes a waveform, 400 messages/s
    result = sized(hits)
    assert result.rate == pytest.approx(6.8e6)
    assert result.producer_ranks.count == 5  # 1 cfd core + 3.4e-3 for the bytes + 2 for the messages, × 1.5
    wide = sized(scaling.Load("40 GB/s", 4000, 1e7, 1), network_gbps=100)  # ⌈1.5 × 3.2⌉ = 5 buffer nodes
    assert (wide.buffer_nodes.count, wide.producer_ranks.count) == (5, 60)  # 20 + 20 producer cores, × 1.5
    few = sized(scaling.Load("40 GB/s, cheap producers", 4000, 1e7, 1), network_gbps=100,
                producer={"bytes_per_cpu_s": {"value": 1e12}, "messages_per_cpu_s": {"value": 1e9}})
    assert few.producer_ranks.count == 5  # 1 by CPU, raised to one per buffer node
    assert few.producer_ranks.working.endswith("raised to one per buffer node: 5")


def test_a_skipped_stage_shows_as_not_measured(tmp_path):
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps(costs_record(nats={"skipped": "no nats-server process listening"})))
    out: list[str] = []
    assert scaling.main(["--costs", str(costs), "--markdown"], write=out.append) == 0
    text = out[0]
    assert "| nats | — | skipped | no nats-server process listening |" in text
    assert "NATS shards = not measured: no nats-server process listening" in text
    rows = [line for line in text.splitlines() if line.startswith("| 16 Mpix")]
    assert len(rows) == 3 and all(row.split(" | ")[7] == "—" and row.endswith("| — |") for row in rows)


def test_a_missing_stage_says_which_and_how_to_measure_it(tmp_path):
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps(costs_record(buffer=None)))
    run = subprocess.run([sys.executable, str(SCRIPT), "--costs", str(costs)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr == (f"scaling.py: {costs}: it has no stage 'buffer' (stages: producer, client, nats, relay, cfd, "
                          "peakfinder8); buffer.bytes_per_cpu_s.value must be a positive number. Measure it with "
                          ".venv/bin/python benchmarks/stage_costs.py --out benchmarks/stage_costs.json\n")
    costs.write_text(json.dumps(costs_record(relay={"bytes_per_cpu_s": {"value": 0}})))
    with pytest.raises(ValueError, match="relay.bytes_per_cpu_s.value must be a positive number"):
        scaling.size(scaling.LOADS[0], 25, scaling.Costs.read(costs), 64, 1.5)
    with pytest.raises(ValueError, match=r"no such file; measure the costs first: \.venv/bin/python benchmarks/"):
        scaling.Costs.read(tmp_path / "absent.json")
    costs.write_text('{"stages": ')
    with pytest.raises(ValueError, match=r"costs.json: not JSON \(Expecting value: line 1 column 12 \(char 11\)\); "
                                         r"write it with \.venv/bin/python benchmarks/stage_costs\.py"):
        scaling.Costs.read(costs)


def test_the_committed_costs_size_every_load_on_every_network():
    out: list[str] = []
    assert scaling.main(["--markdown"], write=out.append) == 0
    rows = [line for line in out[0].splitlines() if line.startswith("| ") and " Gb/s | " in line]
    assert len(rows) == len(scaling.LOADS) * len(scaling.NETWORKS_GBPS)
    assert all(cell.strip() for row in rows for cell in row.split("|")[1:-1])


def test_the_doc_shows_what_the_script_computes_from_the_committed_costs():
    doc = (SCRIPT.parent.parent / "docs" / "scaling.md").read_text()
    begin, end = "<!-- scaling.py --markdown: begin -->\n", "\n<!-- scaling.py --markdown: end -->"
    assert begin in doc and end in doc, "docs/scaling.md lost its markers around the script's output"
    shown = doc[doc.index(begin) + len(begin):doc.index(end)]
    out: list[str] = []
    scaling.main(["--markdown"], write=out.append)
    assert shown == out[0], ("docs/scaling.md does not show what benchmarks/stage_costs.json gives: run "
                             ".venv/bin/python benchmarks/scaling.py --markdown and paste its output between the "
                             "markers")
