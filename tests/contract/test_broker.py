"""The quick start's broker never shows a consumer half a message."""

from __future__ import annotations

import threading
from pathlib import Path
from queue import Empty
from typing import Any

from kombu import Connection

from contract.broker import filesystem_options, filesystem_transport


def test_it_passes_every_message_whole_between_a_writer_and_a_reader(tmp_path: Path) -> None:
    options = filesystem_options(tmp_path)
    # Large messages take a while to write: a reader polling meanwhile would catch
    # one half written if it could see it.
    sent = [{"n": n, "pad": "x" * 4_000_000} for n in range(40)]
    received: list[dict[str, Any]] = []
    give_up = threading.Event()

    def read() -> None:
        # Polls until it has every message or is told to stop: no bound on how long
        # one write may take (a busy machine is slow, not wrong).
        with Connection(transport=filesystem_transport(), transport_options=options) as conn:
            queue = conn.SimpleQueue("q")
            while len(received) < len(sent) and not give_up.is_set():
                try:
                    message = queue.get(timeout=1)
                except Empty:
                    continue
                received.append(message.payload)
                message.ack()
            queue.close()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        with Connection(transport=filesystem_transport(), transport_options=options) as conn:
            queue = conn.SimpleQueue("q")
            for body in sent:
                queue.put(body)
            queue.close()
        reader.join(timeout=600)  # generous: the reader finishes as soon as the last arrives
    finally:
        give_up.set()
        reader.join()
    assert sorted(r["n"] for r in received) == list(range(40))
    assert not list(tmp_path.glob(".*.part"))


def test_a_binding_another_connection_has_begun_is_written_before_anyone_publishes(
    tmp_path: Path,
) -> None:
    """kombu records a binding in its per-process state before it writes the exchange
    table, and skipped the write for a binding the state had: a publisher in another
    thread then routed its message to nobody. Here a first connection stopped right
    after recording (the table not written); a second one binds and publishes."""
    options = filesystem_options(tmp_path)
    with Connection(transport=filesystem_transport(), transport_options=options) as first:
        state = first.default_channel.state  # type: ignore[attr-defined]
        state.binding_declare("q", "q", "q", None)
        try:
            with Connection(transport=filesystem_transport(), transport_options=options) as second:
                queue = second.SimpleQueue("q")
                queue.put({"n": 1})
                assert queue.get(timeout=10).payload == {"n": 1}
                queue.close()
        finally:
            state.binding_delete("q", "q", "q")
