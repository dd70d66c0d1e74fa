"""``rws publish`` / ``rws unpublish``: add a signature to a model folder (or take one out)
while a server may be running on it; ``rws serve --live`` picks the change up without a
restart."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  rws publish snow.safetensors --folder model-store/my-folder
  rws unpublish snow --folder model-store/my-folder
The folder must verify first; the signature must share its lineage and architecture. Files are
written in the order a live server follows: the signature, config.json, then manifest.json.
"""


def _publish(args: argparse.Namespace) -> int:
    from rws_hub.core.signature import Signature
    from rws_hub.io.folder import publish_signature

    sig = Signature.load(args.signature)
    if args.name:
        sig = sig.replace(name=args.name)
    path = publish_signature(args.folder, sig)
    print(f"published {sig.name} into {args.folder} ({path.name}); manifest rewritten")
    return 0


def _unpublish(args: argparse.Namespace) -> int:
    from rws_hub.io.folder import unpublish_signature

    unpublish_signature(args.folder, args.name)
    print(f"removed {args.name} from {args.folder}; manifest rewritten")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "publish",
        help="add a signature file to a model folder (a live server picks it up)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=fmt,
    )
    p.add_argument("signature", help="signature .safetensors")
    p.add_argument("--folder", required=True, help="the model folder")
    p.add_argument("--name", help="publish under this name (default: the signature's own)")
    p.set_defaults(func=_publish)
    u = sub.add_parser(
        "unpublish",
        help="take a signature out of a model folder",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=fmt,
    )
    u.add_argument("name", help="signature name")
    u.add_argument("--folder", required=True, help="the model folder")
    u.set_defaults(func=_unpublish)
