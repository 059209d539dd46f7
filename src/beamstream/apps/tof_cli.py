"""``beamstream tof ENDPOINT --group G --out FILE``: time-of-flight histograms of a stream's cfd hits.

Run several with the same ``--group`` and ``--out`` to share the stream: each keeps a histogram of
the events it gets and ``FILE`` always holds the sum over the members (:mod:`beamstream.apps.tof`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from beamstream.display import console, fail
from beamstream.reading_cli import GroupEndpoint


def tof(
    endpoint: GroupEndpoint,
    out: Annotated[Path, typer.Option("--out", "-o", help="the merged snapshot (HDF5); each member writes its own "
                                                          "into FILE.members/ beside it")],
    group: Annotated[Optional[str], typer.Option(help="read as a member of this consumer group (the members "
                                                      "share the stream and FILE)")] = None,
    field: Annotated[str, typer.Option(help="the waveform field the cfd step read; its hits are FIELD_cfd and "
                                            "FIELD_cfd_count")] = "waveform",
    bins: Annotated[Optional[int], typer.Option(
        min=1, help="histogram bins (default: one per sample of --range)")] = None,
    range_: Annotated[Optional[tuple[float, float]], typer.Option(
        "--range", metavar="LO HI", help="histogram range in samples (default: 0 to the waveforms' length, which the "
                                         "cfd step puts in the stream's description)")] = None,
    every: Annotated[float, typer.Option(
        metavar="SECONDS", min=0.0, help="seconds between snapshots (more, once writing them would take over a tenth "
                                         "of the time)")] = 2.0,
    timeout: Annotated[Optional[float], typer.Option(
        metavar="SECONDS", help="seconds of silence before giving up (default: 30)")] = 30.0,
) -> None:
    """Histogram the hit times of the cfd step (type: cfd) over a stream; exit 1 if the stream is incomplete."""
    from beamstream.apps.tof import SnapshotWriter, TofSnapshot
    from beamstream.client import Client
    from beamstream.errors import BeamstreamError, StreamIncomplete
    from beamstream.steps.tof import hit_fields

    times_field, count_field = hit_fields(field)
    writer = SnapshotWriter(out, every=every)
    snapshot: TofSnapshot | None = None
    complete = True
    try:
        with Client(endpoint, timeout=timeout, **({"group": group} if group else {})) as client:
            try:
                for message in client.messages():
                    if times_field not in message.arrays or count_field not in message.arrays:
                        fail(f"the stream has no fields {times_field!r} and {count_field!r}: add a step "
                             f"{{type: cfd, field: {field}, threshold: ...}} to its spec, or give --field")
                    if snapshot is None:
                        edges = _edges(client.metadata, field, bins, range_)
                        snapshot = TofSnapshot(edges, stream=client.report.stream or "")
                    snapshot.add(message.seq, message.arrays[count_field], message.arrays[times_field])
                    writer.write_when_due(snapshot)
            except StreamIncomplete as exc:
                complete = False
                console.print(exc.report.summary(), highlight=False)
            else:
                console.print(client.report.summary(), highlight=False)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except BeamstreamError as exc:
        fail(str(exc))
    finally:
        writer.close(snapshot)
    if snapshot is None:
        console.print("no events: nothing written")
    else:
        totals = snapshot.totals
        console.print(f"{totals['events']:,} events, {totals['hits_kept']:,} hits histogrammed by this member; "
                      f"all members: {out}", highlight=False)
    if not complete:
        raise typer.Exit(1)


def _edges(metadata, field: str, bins: int | None, range_: tuple[float, float] | None) -> np.ndarray:
    """Bin edges from ``--range``/``--bins``, the range defaulting to the waveforms' length, which the cfd step
    records in the description (even when the waveforms themselves are not sent)."""
    from beamstream.steps.tof import length_constant

    if range_ is None:
        length = metadata.constants.get(length_constant(field)) if metadata is not None else None
        if length is None:
            fail(f"the stream's description does not give the length of field {field!r}; give --range LO HI", code=2)
        range_ = (0.0, float(length.value))
    low, high = range_
    if not high > low:
        fail(f"--range {low} {high}: HI must be above LO", code=2)
    return np.linspace(low, high, (bins or max(1, round(high - low))) + 1)
