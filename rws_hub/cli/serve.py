"""``rws serve``: serve a model folder with TorchServe (see :mod:`rws_hub.launch.torchserve`)."""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path
from typing import Any

from rws_hub.cli.options import add_folder_argument


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model folder over REST with TorchServe (per-request signature mixes)",
        description="Build a TorchServe archive of a model folder into the run directory, start "
        "TorchServe on loopback, wait until the model is READY and print how to call it. "
        "Token authorization is on unless --no-auth. 'rws serve --stop' stops it.",
    )
    add_folder_argument(p)
    p.add_argument("--port", type=int, default=8080, help="inference port (default 8080)")
    p.add_argument("--management-port", type=int, default=8081, help="default 8081")
    p.add_argument("--metrics-port", type=int, default=8082, help="default 8082")
    p.add_argument(
        "--grpc-port",
        type=int,
        default=7070,
        help="TorchServe's gRPC inference port; management is the next one (default 7070)",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--run-dir", type=Path, default=Path("runs/serve"), help="default runs/serve")
    p.add_argument("--name", default=None, help="model name in URLs (default: folder name)")
    p.add_argument("--batch-size", type=int, default=8, help="TorchServe batchSize (default 8)")
    p.add_argument(
        "--max-batch-delay", type=int, default=5, help="TorchServe maxBatchDelay, ms (default 5)"
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--max-alpha", type=float, default=None, help="largest |alpha| accepted")
    p.add_argument(
        "--live",
        action="store_true",
        help="follow the model folder while serving: signatures published into it with "
        "`rws publish` (or removed) reach the server without a restart",
    )
    p.add_argument(
        "--allow-negative", action="store_true", help="accept negative alphas (off by default)"
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="compute precision on a GPU (default float32)",
    )
    p.add_argument(
        "--resident",
        choices=("float", "codes", "factors"),
        default="float",
        help="how signatures are held: float (fastest weight builds), codes (int8/int4 codes "
        "as shipped, dequantized per weight build: about a quarter of the delta memory) or "
        "factors (codes, and low-rank signatures served as branches: base layers once per batch)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads per worker (default 1: on CPUs scale with --workers instead; "
        "per-group convolutions suffer from intra-op threading)",
    )
    p.add_argument(
        "--max-body-mb", type=float, default=10.0, help="largest request body, MB (default 10)"
    )
    p.add_argument(
        "--kservev2",
        action="store_true",
        help="KServe v2 wire format (service_envelope=kservev2; batch size 1)",
    )
    p.add_argument("--no-auth", action="store_true", help="turn token authorization off")
    p.add_argument(
        "--no-gateway",
        action="store_true",
        help="bind TorchServe to --port itself, without the gateway in front (the gateway "
        "answers form bodies, which TorchServe's frontend turns into a 500, with a 415)",
    )
    p.add_argument(
        "--key-expiry-min",
        type=float,
        default=None,
        help="minutes the inference/management keys live (TorchServe's token_expiration_min; "
        "default: as long as the server runs, i.e. 100 years). With a shorter life, "
        "--foreground renews each key before it expires (key_file.json is rewritten)",
    )
    p.add_argument(
        "--renew-keys",
        action="store_true",
        help="issue new inference and management keys for the server of --run-dir now "
        "(rewrites key_file.json; the old keys stop working)",
    )
    p.add_argument(
        "--foreground", action="store_true", help="stay attached; Ctrl-C stops the server"
    )
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for READY")
    p.add_argument("--stop", action="store_true", help="stop the server of --run-dir")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rws_hub.launch import torchserve as serving

    if args.stop:
        if serving.stop(args.run_dir):
            print(f"rws serve: stopped the server of {args.run_dir}")
        else:
            print(f"rws serve: no server running from {args.run_dir}")
        return 0
    if args.renew_keys:
        server = serving.Server.attach(args.run_dir)
        if server is None or not server.any_alive():
            print(f"rws serve: no server running from {args.run_dir}")
            return 1
        try:
            server.renew_keys()
        except serving.ServeError as exc:
            print(f"rws serve: error: {exc}")
            return 1
        print(f"rws serve: new inference and management keys in {server.key_file}")
        return 0

    folder = serving.resolve_folder(args.folder, "rws serve")
    settings: dict[str, Any] = {
        "dtype": args.dtype,
        "allow_negative": args.allow_negative,
        "resident": args.resident,
    }
    if args.max_alpha is not None:
        settings["max_alpha"] = args.max_alpha
    if args.threads:
        settings["threads"] = args.threads
    if args.live:
        # the worker reads the folder itself (not the archive's copy) and follows it
        settings["folder"] = str(Path(folder).resolve())
        settings["live"] = True
    extra: dict[str, Any] = {}
    if args.key_expiry_min is not None:
        extra["key_expiry_min"] = args.key_expiry_min
    try:
        opts = serving.ServeOptions(
            folder=folder,
            run_dir=args.run_dir,
            model_name=args.name,
            host=args.host,
            port=args.port,
            management_port=args.management_port,
            metrics_port=args.metrics_port,
            grpc_port=args.grpc_port,
            batch_size=args.batch_size,
            max_batch_delay=args.max_batch_delay,
            workers=args.workers,
            auth=not args.no_auth,
            gateway=not args.no_gateway,
            envelope="kservev2" if args.kservev2 else None,
            max_body_bytes=int(args.max_body_mb * 1024 * 1024),
            settings=settings,
            **extra,
        )
    except serving.ServeError as exc:
        print(f"rws serve: error: {exc}")
        return 1
    print(f"rws serve: starting TorchServe for {folder} in {args.run_dir} ...", flush=True)
    t0 = time.monotonic()
    try:
        server = serving.start(opts, timeout=args.timeout)
    except serving.ServeError as exc:
        print(f"rws serve: error: {exc}")
        return 1
    print(_banner(server, time.monotonic() - t0), flush=True)
    if not args.foreground:
        return 0
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    keeper = serving.KeyKeeper(server).start() if opts.auth else None
    try:
        while not stop and server.alive():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    if keeper is not None:
        keeper.stop()
    down = server.why_down()
    server.stop()
    print(f"rws serve: stopped ({down})" if down and not stop else "rws serve: stopped")
    return 0


def _banner(server: Any, seconds: float) -> str:
    opts = server.opts
    url = server.inference_url
    if opts.envelope == "kservev2":
        url = f"{opts.inference_url}/v2/models/{opts.model_name}/infer"
    auth = ""
    if opts.auth:
        auth = ' -H "Authorization: Bearer $KEY"'
    body = json.dumps({"image": "<base64 PNG>", "signatures": {"fog": 0.5}, "top_k": 3})
    lines = [
        f"rws serve: {opts.model_name} READY in {seconds:.1f} s",
        f"  inference:  POST {url}",
        f"  signatures: GET  {opts.management_url}/models/{opts.model_name}?customized=true",
        f"  logs:       {server.run_dir / 'logs'}",
    ]
    if opts.gateway:
        lines.insert(
            2,
            f"  gateway:    {opts.inference_url} -> TorchServe on {opts.backend_url} "
            "(form bodies get a 415, not TorchServe's 500; --no-gateway to skip it)",
        )
    if opts.auth:
        lines += [
            f"  token auth: ON; keys in {server.key_file}",
            f"    KEY=$(python -c \"import json; print(json.load(open('{server.key_file}'))"
            "['inference']['key'])\")",
            "    (the management API takes the 'management' key: MKEY=...['management']['key'])",
            f"    keys expire after {_life(opts.key_expiry_min)}; new ones: rws serve "
            f"--renew-keys --run-dir {opts.run_dir}",
        ]
    else:
        lines.append("  token auth: OFF (--no-auth)")
    lines += [
        "  try:",
        f"    curl{auth} -H 'Content-Type: image/png' -H 'X-RWS-Signatures: fog:0.5' "
        f"--data-binary @cat.png {server.inference_url}",
        f"    curl{auth} -H 'Content-Type: image/png' --data-binary @cat.png "
        f"'{opts.inference_url}/invocations?model_name={opts.model_name}"
        "&signatures=fog:0.5,gaussian_noise:1&top_k=3'",
        f"    curl{auth} -H 'Content-Type: application/json' -d '{body}' {server.inference_url}",
        f"  stop: rws serve --stop --run-dir {opts.run_dir}",
    ]
    return "\n".join(lines)


def _life(minutes: float) -> str:
    if minutes >= 365 * 24 * 60:
        return f"{minutes / (365 * 24 * 60):.0f} years (as long as the server runs)"
    return f"{minutes:g} minutes"
