"""The quick start's broker, ``filesystem://``, made safe for several processes.

kombu's filesystem transport creates a message file and then writes it; a
consumer polling the folder can take the file in between and read nothing (a
``JSONDecodeError`` that stops the worker). Here each message is written under
a hidden name and renamed into place, so a consumer only ever sees whole
messages; a new exchange table is likewise created whole before kombu writes
the first binding into it, and every bind writes the table before it returns
(kombu skipped the write when another connection of the process had begun
it). Both the planner and the agents use it for ``filesystem://``.

kombu is imported when the transport is asked for, not when this module is:
importing kombu loads Django's ``Promise`` where Django is installed, and the
agent must not load Django (tests/test_package_boundaries.py).
"""

from __future__ import annotations

import os
import time
import uuid
from functools import cache
from pathlib import Path
from typing import Any


@cache
def filesystem_transport() -> type:
    """kombu's filesystem ``Transport`` whose messages appear in the folder whole."""
    from kombu.transport import filesystem
    from kombu.utils.json import dumps

    class Channel(filesystem.Channel):
        def _put(self, queue: str, message: Any, **kwargs: Any) -> None:  # type: ignore[override]
            name = f"{int(round(time.monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
            final = Path(self.data_folder_out) / name
            # A leading dot: consumers match "<anything>.<queue>.msg" after the first dot.
            partial = final.with_name(f".{name}.part")
            partial.write_bytes(dumps(message).encode())
            os.replace(partial, final)

        def _queue_bind(  # type: ignore[override]
            self, exchange: str, routing_key: str, pattern: str, queue: str
        ) -> None:
            # kombu creates a new exchange table empty and then locks and writes it: a
            # publisher opening it in between reads nothing (a JSONDecodeError on
            # publish). Create it whole first, then let kombu add the binding under
            # its lock.
            table: Path = self._exchange_file(exchange)  # type: ignore[attr-defined]
            self.control_folder.mkdir(exist_ok=True)
            if not table.exists():
                partial = table.with_name(f".{table.name}.{uuid.uuid4()}.part")
                partial.write_bytes(dumps([]).encode())
                try:
                    os.link(partial, table)  # whole or not at all; the first creator wins
                except FileExistsError:
                    pass
                finally:
                    partial.unlink()
            super()._queue_bind(exchange, routing_key, pattern, queue)

        def queue_bind(
            self,
            queue: str,
            exchange: str | None = None,
            routing_key: str = "",
            arguments: Any = None,
            **kwargs: Any,
        ) -> None:
            # kombu records a binding in its per-process state before it writes the
            # exchange table, and skips a binding the state already has: a second
            # connection of the same process (another thread) could then publish
            # before the first had written the table, and its message was routed
            # to nobody (lost; tests/contract/test_broker.py lost 2 of 40 one run
            # in six). Every bind also writes the table itself, under the table's
            # lock: a binding already there is not written twice.
            super().queue_bind(queue, exchange, routing_key, arguments, **kwargs)
            exchange = exchange or "amq.direct"
            # (routing key, pattern, queue), as kombu's queue_bind stores it
            meta = self.typeof(exchange).prepare_bind(queue, exchange, routing_key, arguments)
            self._queue_bind(exchange, meta[0], meta[1], meta[2])

    class Transport(filesystem.Transport):
        pass

    Transport.Channel = Channel
    return Transport


def filesystem_options(folder: Path) -> dict[str, Any]:
    """Transport options for one shared folder (the planner's ``var/broker``)."""
    return {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        # Exchange tables beside the folder, not in the working directory: for
        # var/broker, var/broker-control.
        "control_folder": str(folder.with_name(f"{folder.name}-control")),
        "store_processed": False,
        # The transport polls its folder; kombu's default second would add up to
        # a second per hop (planner -> agent -> planner) to every delivery.
        "polling_interval": 0.1,
    }
