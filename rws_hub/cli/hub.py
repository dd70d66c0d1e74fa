"""``rws push`` / ``rws pull``: a model folder to and from a huggingface_hub model repo."""

from __future__ import annotations

import argparse
import json


def _push(args: argparse.Namespace) -> int:
    from rws_hub.io.hub import push_to_hub

    url = push_to_hub(
        args.folder,
        args.repo_id,
        token=args.token,
        private=args.private,
        commit_message=args.message,
        revision=args.revision,
    )
    print(url)
    return 0


def _pull(args: argparse.Namespace) -> int:
    from rws_hub.io.folder import ModelFolder
    from rws_hub.io.hub import pull

    signatures = "all" if args.signatures is None else [s for s in args.signatures.split(",") if s]
    path = pull(
        args.repo_id,
        revision=args.revision,
        cache_dir=args.cache_dir,
        local_dir=args.local_dir,
        signatures=signatures,
        token=args.token,
    )
    # Check what arrived, as a server would load it; refused signatures are reported.
    folder = ModelFolder.load(path, signatures=signatures)
    for rel, reason in folder.refused.items():
        print(f"refused {rel}: {reason}")
    print(path)
    if args.json:
        print(json.dumps({"path": str(path), "signatures": folder.signature_names(),
                          "refused": folder.refused}))  # fmt: skip
    return 1 if folder.refused else 0


def _verify(args: argparse.Namespace) -> int:
    from rws_hub.io.folder import ModelFolder, verify_folder

    problems = verify_folder(args.folder)
    for rel, reason in sorted(problems.items()):
        print(f"{rel}: {reason}")
    if any(not rel.startswith("signatures/") for rel in problems):
        return 1
    folder = ModelFolder.load(args.folder, signatures="all")
    for rel, reason in folder.refused.items():
        if rel not in problems:
            print(f"{rel}: refused: {reason}")
    names = folder.signature_names()
    print(f"ok: {len(names)} signature(s) load: {', '.join(names) or 'none'}")
    return 1 if problems or folder.refused else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``push``, ``pull`` and ``verify``."""
    p = subparsers.add_parser(
        "push",
        help="upload a model folder to a huggingface_hub model repo",
        description="Verify a model folder against its manifest, create the hub repo if "
        "needed, and upload the folder's files in one commit (remote signature files the "
        "manifest does not list are deleted). Token: --token, $HF_TOKEN or `hf auth login`.",
    )
    p.add_argument(
        "folder", help="model folder (config.json, model.safetensors, manifest.json, ...)"
    )
    p.add_argument("repo_id", help="hub model repo, owner/name")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--token", default=None, help="hub token (default: the saved login)")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--revision", default=None, help="branch to commit to (default main)")
    p.set_defaults(func=_push)

    p = subparsers.add_parser(
        "pull",
        help="download a model folder from a huggingface_hub model repo",
        description="Download a model folder (through the huggingface_hub cache; works with "
        "HF_HUB_OFFLINE=1 once cached), verify it, print its path. Exit status 1 when a "
        "signature file was refused.",
    )
    p.add_argument("repo_id", help="hub model repo, owner/name")
    p.add_argument("--local-dir", default=None, help="put the files in this folder")
    p.add_argument("--cache-dir", default=None, help="huggingface_hub cache (default $HF_HOME/hub)")
    p.add_argument("--revision", default=None, help="branch, tag or commit")
    p.add_argument(
        "--signatures", default=None, help="comma-separated names to fetch (default: all)"
    )
    p.add_argument("--token", default=None, help="hub token for private repos")
    p.add_argument("--json", action="store_true", help="also print a JSON summary line")
    p.set_defaults(func=_pull)

    p = subparsers.add_parser(
        "verify",
        help="check a model folder against its manifest and load it",
        description="Check every file of a model folder against manifest.json (sha256, size), "
        "then load it as a server would and list refused signature files. Exit status 1 on any "
        "problem.",
    )
    p.add_argument("folder", help="model folder")
    p.set_defaults(func=_verify)
