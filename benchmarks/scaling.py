"""Sizing on paper: producer ranks, buffer nodes, NATS shards and relay instances for LCLS-II-class loads, from the
per-stage costs benchmarks/stage_costs.py measured (bytes and messages per CPU second of each stage).

    .venv/bin/python benchmarks/scaling.py                         # the table, from benchmarks/stage_costs.json
    .venv/bin/python benchmarks/scaling.py --markdown              # inputs, arithmetic and table: docs/scaling.md's
    .venv/bin/python benchmarks/scaling.py --node-cores 128 --headroom 2 --costs other.json

The model, per load (R bytes/s on the wire, M messages/s) and network (a NIC carries its line rate ÷ 8 bytes/s
each way, full duplex; one consumer group reads the stream, so a buffer node sends what it receives):

  cores of a stage  = R ÷ (its bytes per CPU second) + M ÷ (its messages per CPU second)
                      (the per-message figure was measured with 16 kB messages, so their bytes count twice: an
                      overestimate of a few percent at most)
  a step's cores    = events/s ÷ (its events per CPU second): cfd per waveform; peakfinder8 per pixel, scaled
                      from the measured 1024×1024 frames to the load's
  parts             = how many pieces the stream must be cut into (a stream sink's list of endpoints, one
                      buffer each): the largest of R ÷ NIC and each tier's cores ÷ node cores
  producer ranks    = ⌈headroom × producer cores⌉ (source, serializer, sink, and a step run in the producers),
                      at least one per buffer node (each receiver needs a producer)
  buffer nodes      = ⌈headroom × max(R ÷ NIC, buffer cores ÷ node cores)⌉
  NATS shards       = JetStream streams, one per buffer in front of it:
                      ⌈headroom × max(R ÷ one stream's measured rate, R ÷ NIC, NATS cores ÷ node cores)⌉,
                      NATS cores = R ÷ (bytes per CPU second of nats-server and the bridge together)
  relay instances   = service processes relaying the whole stream once: ⌈headroom × R ÷ relay bytes per CPU
                      second⌉ (a relay is one event-loop thread: one core)
  bottleneck        = the limit that cuts the stream into the most parts (network, or the CPU of a tier), with
                      the local buffer and with NATS in its place

The loads are the built-in LOADS list; docs/scaling.md states what the figures assume.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_COSTS = Path(__file__).parent / "stage_costs.json"
NETWORKS_GBPS = (25, 100, 400)
MEASURED_BY = "benchmarks/stage_costs.py --out benchmarks/stage_costs.json"
TIERS = {"producer": "CPU of the producers", "buffer": "CPU of the buffer", "client": "CPU of the clients' receiving",
         "analysis": "CPU of {step} in the consumers"}
STREAM_RATE = "one JetStream stream's rate"


@dataclass(frozen=True)
class Load:
    """A stream to size: ``events_per_s`` events of ``event_bytes`` on the wire (None: the cfd step's hits, as
    measured), ``events_per_message`` a message; a step the producers run on every event (``producer_step``) or the
    consumers do (``consumer_step``): "cfd" or "peakfinder8" (then on images of ``pixels``)."""

    name: str
    events_per_s: float
    event_bytes: float | None
    events_per_message: int
    producer_step: str | None = None
    consumer_step: str | None = None
    pixels: int = 0


LOADS = (
    Load("16 Mpix (4096×4096 uint16) at 120 Hz", 120, 4096 * 4096 * 2, 1, consumer_step="peakfinder8",
         pixels=4096 * 4096),
    Load("4 Mpix (2048×2048 uint16) at 5 kHz", 5000, 2048 * 2048 * 2, 1, consumer_step="peakfinder8",
         pixels=2048 * 2048),
    Load("ToF, 100 kHz waveforms of 8192 int16, sent whole", 100_000, 8192 * 2, 256, consumer_step="cfd"),
    Load("ToF, 100 kHz waveforms, reduced to hits in the producers", 100_000, None, 256, producer_step="cfd"),
)


class Costs:
    """The figures of a stage_costs.json: ``figure(stage, name)`` is its value, ValueError naming what is missing
    and how to measure it; ``skipped(stage)`` is why a stage was not measured (None if it was)."""

    def __init__(self, record: dict, origin: str) -> None:
        self.record, self.origin = record, origin
        self.stages: dict = record.get("stages", {})

    @classmethod
    def read(cls, path: Path) -> Costs:
        try:
            return cls(json.loads(path.read_text()), str(path))
        except FileNotFoundError:
            raise ValueError(f"{path}: no such file; measure the costs first: .venv/bin/python {MEASURED_BY}") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not JSON ({error}); write it with .venv/bin/python {MEASURED_BY}") from None

    def skipped(self, stage: str) -> str | None:
        return self.stages.get(stage, {}).get("skipped")

    def figure(self, stage: str, name: str) -> float:
        value = self.stages.get(stage, {}).get(name, {}).get("value")
        if not isinstance(value, (int, float)) or value <= 0:
            why = (f"stage {stage!r} was skipped: {self.skipped(stage)}" if self.skipped(stage) else
                   f"stage {stage!r} has no figure {name!r}" if stage in self.stages else
                   f"it has no stage {stage!r} (stages: {', '.join(self.stages) or 'none'})")
            raise ValueError(f"{self.origin}: {why}; {stage}.{name}.value must be a positive number. Measure it with "
                             f".venv/bin/python {MEASURED_BY}")
        return float(value)


@dataclass
class Need:
    """A count, rounded up after the headroom, with the arithmetic that gave it."""

    count: int
    working: str


def ceil_need(headroom: float, exact: float, working: str) -> Need:
    """⌈headroom × exact⌉, ``working`` showing how ``exact`` (a need before headroom) was had."""
    count = math.ceil(round(headroom * exact, 9))  # 1.5 × 2.0 is 3, not 3.0000000000000004 rounded up to 4
    return Need(count, f"⌈{headroom:g} × {working}⌉ = ⌈{headroom * exact:.3g}⌉ = {count}")


def gb(value: float) -> str:
    return f"{value / 1e9:.3g} GB/s"


@dataclass
class Sizing:
    """What one load needs on one network (see the module's docstring)."""

    load: Load
    network_gbps: float
    rate: float  # bytes/s
    messages: float  # messages/s
    cores: dict[str, float]  # tier: cores before headroom (producer, buffer, client, analysis, nats, relay)
    producer_ranks: Need
    client_ranks: Need
    analysis_cores: Need | None
    buffer_nodes: Need
    nats_shards: Need | str  # str: why not measured
    relay_instances: Need | str
    bottleneck: str
    nats_bottleneck: str


def step_rate(costs: Costs, step: str, load: Load) -> tuple[float, str]:
    """Events per CPU second of ``step`` on ``load``'s events, and how it was had."""
    if step == "cfd":
        rate = costs.figure("cfd", "waveforms_per_cpu_s")
        return rate, f"{rate:,.0f} waveforms per core"
    if step == "peakfinder8":
        pixels = costs.figure("peakfinder8", "pixels_per_cpu_s")
        return pixels / load.pixels, f"({pixels / 1e6:,.0f} Mpix per core ÷ {load.pixels / 1e6:.1f} Mpix)"
    raise ValueError(f"{load.name}: unknown step {step!r}; the costs have cfd and peakfinder8")


def stage_cores(costs: Costs, stage: str, rate: float, messages: float) -> tuple[float, str]:
    per_byte, per_message = costs.figure(stage, "bytes_per_cpu_s"), costs.figure(stage, "messages_per_cpu_s")
    return (rate / per_byte + messages / per_message,
            f"({gb(rate)} ÷ {gb(per_byte)} + {messages:,.0f}/s ÷ {per_message:,.0f}/s)")


def size(load: Load, network_gbps: float, costs: Costs, node_cores: int, headroom: float) -> Sizing:
    """What ``load`` needs on a ``network_gbps`` network, from ``costs``."""
    event_bytes = load.event_bytes if load.event_bytes is not None else costs.figure("cfd", "hit_bytes_per_waveform")
    rate, messages = load.events_per_s * event_bytes, load.events_per_s / load.events_per_message
    nic = network_gbps * 1e9 / 8
    cores, working = {}, {}
    for tier in ("producer", "buffer", "client"):
        cores[tier], working[tier] = stage_cores(costs, tier, rate, messages)
    if load.producer_step:
        per_core, shown = step_rate(costs, load.producer_step, load)
        cores["producer"] += load.events_per_s / per_core
        working["producer"] = f"({working['producer']} + {load.events_per_s:,.0f}/s ÷ {shown})"
    analysis = None
    if load.consumer_step:
        per_core, shown = step_rate(costs, load.consumer_step, load)
        cores["analysis"] = load.events_per_s / per_core
        analysis = ceil_need(headroom, cores["analysis"], f"{load.events_per_s:,.0f}/s ÷ {shown}")
    # parts the stream must be cut into, before headroom, by each limit of the local-buffer path
    parts = {"network": rate / nic, **{TIERS[tier].format(step=load.consumer_step): cores[tier] / node_cores
                                       for tier in ("producer", "buffer", "client", "analysis") if tier in cores}}
    buffer_nodes = ceil_need(headroom, max(rate / nic, cores["buffer"] / node_cores),
                             f"max({gb(rate)} ÷ {gb(nic)}, {cores['buffer']:.3g} cores ÷ {node_cores})")
    producers = ceil_need(headroom, cores["producer"], working["producer"])
    if producers.count < buffer_nodes.count:
        raised = f"{producers.working}, raised to one per buffer node: {buffer_nodes.count}"
        producers = Need(buffer_nodes.count, raised)
    clients = ceil_need(headroom, cores["client"], working["client"])
    nats_shards: Need | str
    if reason := costs.skipped("nats"):
        nats_shards, nats_bottleneck = f"not measured: {reason}", "—"
    else:
        stream, per_core = costs.figure("nats", "stream_bytes_per_s"), costs.figure("nats", "bytes_per_cpu_s")
        cores["nats"] = rate / per_core  # nats-server and the bridge, which stands where the buffer did
        nats_parts = {limit: value for limit, value in parts.items() if limit != TIERS["buffer"]}
        nats_parts.update({STREAM_RATE: rate / stream, "CPU of NATS": cores["nats"] / node_cores})
        nats_shards = ceil_need(headroom, max(rate / stream, rate / nic, cores["nats"] / node_cores),
                                f"max({gb(rate)} ÷ {gb(stream)} a stream, {gb(rate)} ÷ {gb(nic)}, "
                                f"{cores['nats']:.3g} cores ÷ {node_cores})")
        nats_bottleneck = bottleneck(nats_parts)
    relay: Need | str
    if reason := costs.skipped("relay"):
        relay = f"not measured: {reason}"
    else:
        per_core = costs.figure("relay", "bytes_per_cpu_s")
        cores["relay"] = rate / per_core
        relay = ceil_need(headroom, cores["relay"], f"{gb(rate)} ÷ {gb(per_core)}")
    return Sizing(load, network_gbps, rate, messages, cores, producers, clients, analysis, buffer_nodes, nats_shards,
                  relay, bottleneck(parts), nats_bottleneck)


def bottleneck(parts: dict[str, float]) -> str:
    """The limit that cuts the stream into the most parts (the network on a tie), and into how many, before
    headroom: in NICs, nodes or JetStream streams."""
    name = max(parts, key=lambda limit: (parts[limit], limit == "network"))
    unit = "NIC" if name == "network" else "stream" if name == STREAM_RATE else "node"
    value = parts[name]
    return f"{name}: {value:.2g} {unit}" if value < 1 else f"{name}: {value:.2g} {unit}s" if value < 10 else \
        f"{name}: {value:,.0f} {unit}s"


def count(need: Need | str | None) -> str:
    """A need's count; — for none or one not measured."""
    return "—" if need is None or isinstance(need, str) else str(need.count)


def table(sizings: list[Sizing]) -> list[str]:
    lines = ["| load | network | data rate | producer ranks | buffer nodes | client ranks | analysis cores | "
             "NATS shards | relay instances | bottleneck (local buffer) | bottleneck (NATS backend) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for each in sizings:
        cells = [each.load.name, f"{each.network_gbps:g} Gb/s", f"{gb(each.rate)} ({each.rate * 8 / 1e9:.3g} Gb/s)",
                 *map(count, (each.producer_ranks, each.buffer_nodes, each.client_ranks, each.analysis_cores,
                              each.nats_shards, each.relay_instances)), each.bottleneck, each.nats_bottleneck]
        lines.append(f"| {' | '.join(cells)} |")
    return lines


def arithmetic(sizings: list[Sizing]) -> list[str]:
    """Per load, the counts that do not depend on the network, then per network the ones that do."""
    lines: list[str] = []
    by_load: dict[str, list[Sizing]] = {}
    for each in sizings:
        by_load.setdefault(each.load.name, []).append(each)
    for name, rows in by_load.items():
        first, load = rows[0], rows[0].load
        lines.append(f"**{name}**: {load.events_per_s:,.0f} events/s × {first.rate / load.events_per_s:,.0f} bytes = "
                     f"{gb(first.rate)}, in {first.messages:,.0f} messages/s ({load.events_per_message} "
                     f"event{'s' * (load.events_per_message > 1)} a message)")
        lines.append(f"- producer ranks = {first.producer_ranks.working}")
        lines.append(f"- client ranks (receive, verify) = {first.client_ranks.working}")
        if first.analysis_cores:
            lines.append(f"- analysis cores ({load.consumer_step} on every event, in the consumers) = "
                         f"{first.analysis_cores.working}")
        lines.append(f"- buffer cores = {first.cores['buffer']:.3g}, before headroom")
        relay = first.relay_instances
        lines.append(f"- relay instances = {relay if isinstance(relay, str) else relay.working}")
        for each in rows:
            nats = each.nats_shards if isinstance(each.nats_shards, str) else each.nats_shards.working
            lines.append(f"- {each.network_gbps:g} Gb/s: buffer nodes = {each.buffer_nodes.working}; "
                         f"NATS shards = {nats}")
        lines.append("")
    return lines


def inputs(costs: Costs) -> list[str]:
    record, machine = costs.record, costs.record.get("machine", {})
    lines = [f"Measured {record.get('date', '?')} by `{record.get('command', '?')}` ({record.get('seconds', '?')} s, "
             f"code {record.get('code', '?')}) on {machine.get('cores', '?')} cores of "
             f"{machine.get('cpu_model', '?')}; load average "
             f"{' '.join(map(str, machine.get('load_average_before', [])))} before, "
             f"{' '.join(map(str, machine.get('load_average_after', [])))} after:", "",
             "| stage | figure | value | units |", "|---|---|---|---|"]
    for stage, figures in costs.stages.items():
        if "skipped" in figures:
            lines.append(f"| {stage} | — | skipped | {figures['skipped']} |")
        for name, value in figures.items():
            if isinstance(value, dict):
                lines.append(f"| {stage} | {name} | {value['value']:,.4g} | {value['units']} |")
    return lines


def main(argv: list[str] | None = None, write: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--costs", type=Path, default=DEFAULT_COSTS, help=f"stage costs JSON (default {DEFAULT_COSTS})")
    parser.add_argument("--node-cores", type=int, default=64, help="cores of a node (default 64)")
    parser.add_argument("--headroom", type=float, default=1.5, help="factor on every need before rounding up "
                                                                    "(default 1.5)")
    parser.add_argument("--networks", default=",".join(map(str, NETWORKS_GBPS)), help="NIC speeds in Gb/s")
    parser.add_argument("--markdown", action="store_true", help="the measured inputs and the arithmetic too")
    args = parser.parse_args(argv)
    if args.node_cores < 1 or args.headroom < 1:
        parser.error("--node-cores must be at least 1 and --headroom at least 1")
    try:
        costs = Costs.read(args.costs)
        sizings = [size(load, float(network), costs, args.node_cores, args.headroom)
                   for load in LOADS for network in args.networks.split(",")]
    except ValueError as error:
        print(f"scaling.py: {error}", file=sys.stderr)
        return 2
    lines = []
    if args.markdown:
        lines += ["### Measured inputs", "", *inputs(costs), "",
                  f"### Arithmetic (node {args.node_cores} cores, headroom {args.headroom:g})", "",
                  *arithmetic(sizings), "### Table", ""]
    lines += table(sizings)
    write("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
