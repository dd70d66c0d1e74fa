"""Soak a real TorchServe with concurrent requests of random mixes; every answer must equal the
single-request in-process reference (the same model folder through :class:`Engine`).

The soak is :func:`rws_hub.launch.soak.run_soak`; ``tests/integration/test_soak.py`` runs it with a
few hundred requests, this script with thousands::

    .venv/bin/python benchmarks/soak.py --requests 5000 --clients 8 --out soak.json
    .venv/bin/python benchmarks/soak.py --folder path/to/model-folder --requests 3000

Without ``--folder`` a toy model folder is made on the fly (:mod:`rws_hub.zoo.toy`: VGG-16 at
width 0.125 with four random signatures and, unless ``--no-auto``, an untrained corruption
detector). The server listens on free loopback ports only, with token auth and batching on
(``--batch-size``, ``--batch-delay``). Requests use persistent sessions, one per client thread, and mix three wire forms: JSON with the mix as an object, list or text, and raw
image bytes with the mix in ``X-RWS-*`` headers. ``"auto"`` is sent too when the server's model
has a corruption detector (``describe()["auto"]``). Bounded: at most ``--requests`` requests
and ``--max-seconds`` of sending.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from rws_hub.inference.engine import Engine
from rws_hub.launch.client import worker_pids
from rws_hub.launch.soak import run_soak
from rws_hub.launch.torchserve import start_on_free_ports
from rws_hub.zoo.toy import add_toy_detector, make_toy_folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", type=Path, default=None, help="model folder (default: tiny)")
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batch-delay", type=int, default=5, help="maxBatchDelay in ms")
    p.add_argument("--max-seconds", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads in the worker")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    p.add_argument("--no-auto", action="store_true", help="tiny folder without a detector")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally: stop the server
    torch.set_num_threads(1)  # the reference shares the CPUs with the server

    with tempfile.TemporaryDirectory(prefix="rws-soak-") as tmp:
        folder = args.folder
        if folder is None:
            folder = make_toy_folder(Path(tmp) / "tiny-vgg")
            if not args.no_auto:
                add_toy_detector(folder)
        engine = Engine.from_folder(folder, device="cpu", max_alpha=3.0)
        server = start_on_free_ports(
            folder,
            Path(tmp) / "serve",
            "soak",
            timeout=180,
            batch_size=args.batch_size,
            max_batch_delay=args.batch_delay,
            settings={"max_alpha": 3.0, "threads": args.threads},
        )
        try:
            pid_before = worker_pids(server)
            result = run_soak(
                server,
                engine,
                total=args.requests,
                clients=args.clients,
                seed=args.seed,
                max_seconds=args.max_seconds,
            )
            restarted = worker_pids(server) != pid_before
        finally:
            server.stop()
    report = asdict(result) | {"worker_restarted": restarted, "batch_delay_ms": args.batch_delay}
    print(result.summary())
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if result.mismatches == 0 and result.errors == 0 and not restarted else 1


if __name__ == "__main__":
    raise SystemExit(main())
