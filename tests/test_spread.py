"""Producers spread round-robin over several receivers (a stream sink with a list of endpoints), with no buffer:
each receiver gets its ranks' events once and has an exact verdict on its part."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from beamstream.accounting import StreamReport
from beamstream.batch import Share
from beamstream.client import Client
from beamstream.errors import SpecError
from beamstream.producer import run_local
from beamstream.spec import parse_spec
from beamstream.wire import EndMessage
from test_stream import SOURCE, check_events, expected_bank, stream_spec


def read_all(client: Client, into: dict) -> None:
    try:
        into["events"] = list(client.events())
    except Exception as exc:  # the test looks at it
        into["error"] = exc


@pytest.mark.parametrize("producers", [2, 3])
def test_each_receiver_gets_its_ranks_once_and_a_verdict_on_them(tmp_path, producers):
    endpoints = [f"ipc://{tmp_path}/receiver-0", f"ipc://{tmp_path}/receiver-1"]
    spec = stream_spec({"type": "stream", "endpoint": endpoints})
    clients = [Client(endpoint, bind=True, timeout=60) for endpoint in endpoints]
    outcomes: list[dict] = [{}, {}]
    readers = [threading.Thread(target=read_all, args=(client, outcome)) for client, outcome in zip(clients, outcomes)]
    for reader in readers:
        reader.start()
    result = run_local(spec, producers)
    for reader, client in zip(readers, clients):
        reader.join(60)
        client.close()
    assert result.ok, result.errors
    assert [outcome.get("error") for outcome in outcomes] == [None, None]
    for number, (client, outcome) in enumerate(zip(clients, outcomes)):
        ranks = list(range(number, producers, 2))
        assert {event.rank for event in outcome["events"]} == set(ranks), "each receiver gets its ranks only"
        report = client.report
        assert report.complete and report.ended == ranks and report.missing == []
        shown = ", ".join(map(str, ranks))
        assert f"from {len(ranks)}/{len(ranks)} (ranks {shown}) producers" in report.summary()
    check_events(outcomes[0]["events"] + outcomes[1]["events"], 40, expected_bank())


def test_a_message_for_another_receiver_is_refused():
    share = Share(rank=0, producers=4)
    report = StreamReport(endpoints=["ipc://x"])
    end = EndMessage(stream="s", rank=1, producers=4, share=share.with_rank(1), messages=0, events=0, last_seq=None,
                     receivers=2)
    assert report.refusal(end) is None
    report.add_end(end)
    assert report.ranks == range(1, 4, 2)
    wrong = EndMessage(stream="s", rank=2, producers=4, share=share.with_rank(2), messages=0, events=0, last_seq=None,
                       receivers=2)
    assert "producer 2 of 4 sends to receiver 0 of 2; this one reads the producers 1, 3" in report.refusal(wrong)
    assert not report.all_ended
    report.add_end(EndMessage(stream="s", rank=3, producers=4, share=share.with_rank(3), messages=0, events=0,
                              last_seq=None, receivers=2))
    assert report.all_ended and report.complete


def test_a_receiver_missing_a_producer_says_which(tmp_path):
    report = StreamReport(endpoints=["ipc://x"])
    share = Share(rank=0, producers=4, start=0, stop=8)
    report.add_end(EndMessage(stream="s", rank=0, producers=4, share=share, messages=0, events=0, last_seq=None,
                              receivers=2))
    assert not report.complete
    assert "producer 2: nothing arrived" in report.summary()
    assert "from 1/2 (ranks 0, 2) producers" in report.summary()


@pytest.mark.parametrize("sink, words", [
    ({"endpoint": ["ipc:///tmp/a", "ipc:///tmp/a"]}, "names an endpoint twice"),
    ({"endpoint": []}, "give an endpoint, or a list"),
    ({"endpoint": ["ipc:///tmp/a", "ipc:///tmp/b"], "bind": True}, "spreads push producers that connect"),
    ({"endpoint": ["ipc:///tmp/a", "ipc:///tmp/b"], "pattern": "pub"}, "spreads push producers that connect"),
])
def test_bad_spreads_are_refused_at_spec_check(sink, words):
    with pytest.raises(SpecError, match=words):
        stream_spec({"type": "stream", **sink})


def test_a_second_stream_sink_must_spread_alike():
    with pytest.raises(SpecError, match=r"sinks\[1\] \(stream\) sends to one endpoint while another stream sink "
                                        r"spreads the producers over 2"):
        parse_spec({"source": SOURCE, "sinks": [{"type": "stream", "endpoint": ["ipc:///tmp/a", "ipc:///tmp/b"]},
                                                 {"type": "stream", "endpoint": "ipc:///tmp/c"}]})


def test_more_endpoints_than_producers_is_refused_before_anything_is_sent(tmp_path):
    spec = stream_spec({"type": "stream", "endpoint": [f"ipc://{tmp_path}/a", f"ipc://{tmp_path}/b"]})
    result = run_local(spec, 1)
    assert not result.ok
    assert "spreads the producers over 2 endpoints, but there are 1 producers" in str(result.errors)
    assert np.all([not (tmp_path / name).exists() for name in ("a", "b")])
