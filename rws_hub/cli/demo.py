"""``rws demo`` (the Gradio web demo) and ``rws up`` (TorchServe plus the demo as its client).

Gradio is imported only when ``rws demo`` runs: the app is the packaged
:mod:`rws_hub.integrations.gradio_app` (imported then, for start-up speed).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rws_hub.cli.options import add_folder_argument

UP_EPILOG = """examples:
  rws up                                   # embedded default (checkout); Ctrl-C stops both
  rws up path/to/folder --port 9080 --demo-port 7870
  rws up --detach && rws up --stop         # in the background, then stop
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the web demo: upload an image, corrupt it, patch robustness in, compare",
        description="Start the Gradio web demo on loopback and print its URL. By default it runs "
        "the serving engine in this process on the model folder (in a checkout, the embedded "
        "default); with --server it is a REST client of a running `rws serve`.",
    )
    _folder_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="REST client of `rws serve`: http://host:8080[/predictions/<model>]",
    )
    p.add_argument("--token-file", default=None, metavar="FILE", help="the server's key_file.json")
    p.add_argument(
        "--management-url", default=None, metavar="URL", help="default: inference port + 1"
    )
    p.add_argument("--device", default=None, help="engine device (default: CUDA if present)")
    p.set_defaults(func=run_demo)

    u = subparsers.add_parser(
        "up",
        help="start the whole stack: TorchServe, then the web demo as its REST client",
        description="Start TorchServe for a model folder (rws serve), wait until it is READY, "
        "start the web demo as its REST client, and print both URLs. Ctrl-C (or SIGTERM) stops "
        "both; `rws up --stop` stops a stack started with --detach or from another terminal.",
        epilog=UP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _folder_arguments(u)
    u.add_argument(
        "--port",
        type=int,
        default=8080,
        help="TorchServe inference port; management and metrics use the next two (default 8080)",
    )
    u.add_argument("--demo-port", type=int, default=7860, help="web demo port (default 7860)")
    u.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    u.add_argument("--run-dir", type=Path, default=Path("runs/up"), help="default runs/up")
    u.add_argument("--no-auth", action="store_true", help="turn token authorization off")
    u.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each part")
    u.add_argument(
        "--detach", action="store_true", help="return once both are up (stop with --stop)"
    )
    u.add_argument("--stop", action="store_true", help="stop the stack of --run-dir")
    u.set_defaults(func=run_up)


def _folder_arguments(p: argparse.ArgumentParser) -> None:
    """The model folder: a positional FOLDER or ``--model FOLDER`` (the same thing)."""
    add_folder_argument(p)
    p.add_argument("--model", type=Path, default=None, metavar="FOLDER", help="the same as FOLDER")


def _folder(args: argparse.Namespace) -> Path | None:
    """FOLDER or --model (given once), or None for the default."""
    if args.folder is not None and args.model is not None and args.folder != args.model:
        raise ValueError("give the model folder once: FOLDER or --model FOLDER")
    return args.folder if args.folder is not None else args.model


def run_demo(args: argparse.Namespace) -> int:
    from rws_hub.launch.locations import resolve_folder

    model = _folder(args)
    if args.server is None:  # fail fast, before importing Gradio
        model = resolve_folder(model, "rws demo")
    args.model = str(model) if model is not None else None
    argv = ["--host", args.host, "--port", str(args.port)]
    for flag, value in (
        ("--model", args.model),
        ("--server", args.server),
        ("--token-file", args.token_file),
        ("--management-url", args.management_url),
        ("--device", args.device),
    ):
        if value is not None:
            argv += [flag, str(value)]
    from rws_hub.integrations import gradio_app  # imports Gradio (seconds)

    return int(gradio_app.main(argv))


def run_up(args: argparse.Namespace) -> int:
    from rws_hub.launch import torchserve as serving
    from rws_hub.launch.locations import resolve_folder
    from rws_hub.launch.stack import StackError, StackOptions, start_stack, stop_stack

    if args.stop:
        if stop_stack(args.run_dir):
            print(f"rws up: stopped the stack of {args.run_dir}")
        else:
            print(f"rws up: no stack running from {args.run_dir}")
        return 0

    folder = resolve_folder(_folder(args), "rws up")
    opts = StackOptions(
        folder=folder,
        run_dir=args.run_dir,
        host=args.host,
        port=args.port,
        demo_port=args.demo_port,
        auth=not args.no_auth,
    )
    print(f"rws up: starting TorchServe for {folder} ...", flush=True)
    t0 = time.monotonic()
    # SIGTERM stops the stack the way Ctrl-C does, from the first moment to the last.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    stack = None
    detached = False
    code = 0
    try:
        try:
            stack = start_stack(opts, timeout=args.timeout)
        except (StackError, serving.ServeError) as exc:
            print(f"rws up: error: {exc}", file=sys.stderr)
            return 1
        keys = "" if not opts.auth else f"\n  token keys:   {stack.server.key_file}"
        print(
            f"rws up: ready in {time.monotonic() - t0:.1f} s\n"
            f"  web demo:     {stack.demo_url}\n"
            f"  REST (POST):  {stack.inference_url}{keys}\n"
            f"  logs:         {stack.run_dir}",
            flush=True,
        )
        if args.detach:
            detached = True
            print(
                f"rws up: running in the background; stop it: rws up --stop --run-dir {args.run_dir}"
            )
            return 0
        print("rws up: press Ctrl-C to stop both", flush=True)
        while stack.alive():
            time.sleep(0.5)
        if not (stack.run_dir / "stack.json").exists():
            print("rws up: the stack was stopped (rws up --stop)", flush=True)
        else:
            part = "the demo" if not stack.demo_alive() else "TorchServe"
            print(f"rws up: {part} exited; stopping the rest", file=sys.stderr, flush=True)
            code = 1
    except KeyboardInterrupt:
        print("\nrws up: stopping ...", flush=True)
        if stack is None:  # interrupted while starting: whatever got recorded goes
            stop_stack(args.run_dir)
            code = 130
    finally:
        if not detached:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if stack is not None:
                stack.stop()
            signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, previous)
    print("rws up: stopped", flush=True)
    return code


def _raise_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt
