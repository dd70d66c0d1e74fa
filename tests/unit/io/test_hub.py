"""huggingface_hub access without a network: model cards, an offline cache laid out as the
hub client lays it out, and push against a closed port and a local stand-in endpoint."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from helpers.hub import NAMES, make_tiny_folder, populate_hf_cache, run_python
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from rws_hub.errors import ArtifactError
from rws_hub.io.card import model_card
from rws_hub.io.folder import ModelFolder, read_manifest, signature_file
from rws_hub.io.hub import push_to_hub, upload_files


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_folder(tmp_path_factory.mktemp("hub") / "tiny")


def flip_byte(path: Path, offset: int = -10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# -- model card ---------------------------------------------------------------------------------


def test_model_card_parses_with_huggingface_hub(built: Path) -> None:
    config = json.loads((built / "config.json").read_text())
    text = (built / "README.md").read_text()
    assert text == model_card(config)  # generated from config.json, not written by hand
    card = ModelCard.load(built / "README.md")
    data = card.data
    assert data.library_name == "rws-hub"
    assert data.datasets == ["cifar10"] and data.license == "apache-2.0"
    assert {"rws-hub", "robust-weight-signatures", "vgg16_cifar"} <= set(data.tags)
    results = data.eval_results
    per = config["metrics"]["corruptions"]
    assert len(results) == 1 + sum(len(v) for v in per.values())
    ta = [r for r in results if r.metric_name.startswith("TA (clean")]
    assert len(ta) == 1 and ta[0].metric_value == config["metrics"]["clean_accuracy"]
    for name in NAMES:
        got = {r.metric_name: r.metric_value for r in results if r.dataset_config == name}
        assert got[f"RA, patched with its signature ({name})"] == round(per[name]["patched_ra"], 6)
        assert got[f"RA, clean backbone ({name})"] == round(per[name]["backbone_ra"], 6)
    assert all(r.task_type == "image-classification" for r in results)
    index = data.to_dict()["model-index"]
    assert index[0]["name"] == card.data.model_name
    assert "| gaussian_noise | 40.00 | 70.00 | 88.00 |" in text
    assert "| **mean** | 41.00 | 71.00 | 88.00 |" in text


def test_model_card_accepts_percent() -> None:
    metrics = {"clean_accuracy": 80.15, "corruptions": {"fog": {"patched_ra": 72.9}}}
    text = model_card({"architecture": "vgg16_cifar", "classes": ["a"], "metrics": metrics})
    assert "80.15 %" in text and "| fog | 72.90 |" in text


def test_model_card_gain_share_and_rebuild_command() -> None:
    row = {"backbone_ra": 0.5, "patched_ra": 0.68, "robust_model_ra": 0.7}
    metrics = {"clean_accuracy": 0.8, "corruptions": {"fog": row, "snow": dict(row)}}
    config = {"architecture": "vgg16_cifar", "classes": ["a"], "metrics": metrics}
    text = model_card(config | {"rebuild": "rws zoo build --width 0.25"})
    assert "recovers **90%** of the RA gain" in text
    assert "## Rebuild" in text and "    rws zoo build --width 0.25" in text
    assert "## Rebuild" not in model_card(config)


def test_model_card_of_an_entry_that_references_another_set() -> None:
    """A folder on another data set names the set it serves by lineage and how much of its own
    signatures' gain the referenced ones recover."""
    row = {"backbone_ra": 0.2, "patched_ra": 0.3, "robust_model_ra": 0.32}
    row |= {"transferred_ra": 0.28, "transferred_ta": 0.25}
    metrics = {"clean_accuracy": 0.27, "corruptions": {"fog": row}}
    ref = {"folder": "../c10", "repo_id": "rws-hub/c10", "prefix": "cifar10."}
    config = {"architecture": "vgg16_cifar", "classes": ["a"], "metrics": metrics}
    text = model_card(config | {"signature_sets": [ref]})
    assert "also serves the signatures of `../c10` (hub: `rws-hub/c10`)" in text
    assert "recovers **80%** of the own signatures' mean RA gain" in text
    assert "RA, patched with the referenced entry's signature" in text
    ModelCard(text)


def test_model_card_without_metrics_has_no_model_index() -> None:
    text = model_card({"architecture": "vgg16_cifar", "classes": ["a", "b"], "metrics": {}})
    card = ModelCard(text)
    assert card.data.library_name == "rws-hub" and not card.data.eval_results
    assert "No measured results" in text


# -- offline hub cache --------------------------------------------------------------------------

OFFLINE_SCRIPT = r"""
import json, sys, traceback
from pathlib import Path
import torch
from safetensors.torch import save_file
from huggingface_hub import constants
from rws_hub.cli import main as cli
from rws_hub.io.hub import from_pretrained, pull, signature_from_pretrained

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path({out!r})
res = {{"offline": constants.HF_HUB_OFFLINE}}
def err(fn):
    try:
        fn()
        return None
    except Exception as exc:
        return f"{{type(exc).__name__}}: {{exc}}"

mf = from_pretrained("owner/tiny")
res["full"] = {{"path": str(mf.path), "names": mf.signature_names(), "refused": mf.refused}}
res["full_pretrained"] = sum(float(t.sum()) for t in
                             from_pretrained("owner/tiny", pretrained=True).pretrained_state().values())
torch.manual_seed(0)
x = torch.rand(4, 3, 32, 32)
with torch.no_grad():
    logits = mf.model(x)
sig = signature_from_pretrained("owner/tiny", "fog")
save_file({{"x": x, "logits": logits, **{{"fog." + k: v for k, v in sig.tensors.items()}}}},
          str(out / "offline.safetensors"))
sub = from_pretrained("owner/tiny", signatures=["fog"])
res["subset"] = sub.signature_names()
only = signature_from_pretrained("owner/partial", "contrast")
res["partial"] = only.name
res["partial_full_model"] = err(lambda: from_pretrained("owner/partial"))
bad = from_pretrained("owner/tampered")
res["tampered"] = {{"names": bad.signature_names(), "refused": bad.refused}}
res["tampered_sig"] = err(lambda: signature_from_pretrained("owner/tampered", "fog"))
res["tampered_model"] = err(lambda: from_pretrained("owner/badmodel"))
res["unknown_repo"] = err(lambda: from_pretrained("owner/nothing"))
res["pull_local_dir"] = str(pull("owner/tiny", local_dir=str(out / "local")))
res["cli_pull"] = cli(["pull", "owner/tiny", "--local-dir", str(out / "cli"), "--json"])
print("RESULT " + json.dumps(res))
"""


def test_offline_hub_cache(built: Path, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    hub_cache = tmp_path / "hf" / "hub"
    populate_hf_cache(built, hub_cache, "owner/tiny")
    # a user who downloaded only one patch: the snapshot holds the manifest and that file
    partial = tmp_path / "partial"
    (partial / "signatures").mkdir(parents=True)
    shutil.copy(built / "manifest.json", partial / "manifest.json")
    shutil.copy(built / signature_file("contrast"), partial / signature_file("contrast"))
    populate_hf_cache(partial, hub_cache, "owner/partial", tree=False)  # as hf_hub_download
    # damaged blobs in the cache
    tampered = Path(shutil.copytree(built, tmp_path / "tampered"))
    flip_byte(tampered / signature_file("fog"))
    populate_hf_cache(tampered, hub_cache, "owner/tampered")
    badmodel = Path(shutil.copytree(built, tmp_path / "badmodel"))
    flip_byte(badmodel / "model.safetensors")
    populate_hf_cache(badmodel, hub_cache, "owner/badmodel")

    out = tmp_path / "out"
    out.mkdir()
    proc = run_python(
        OFFLINE_SCRIPT.format(out=str(out)),
        {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT ") :])

    assert res["offline"] is True
    # the full model came from the cache snapshot, all signatures loaded
    assert res["full"]["path"].startswith(str(hub_cache / "models--owner--tiny" / "snapshots"))
    assert res["full"]["names"] == list(NAMES) and res["full"]["refused"] == {}
    local = ModelFolder.load(built)
    got = load_file(str(out / "offline.safetensors"))
    with torch.no_grad():
        assert torch.equal(local.model(got["x"]), got["logits"])
    for k, v in local.signatures["fog"].tensors.items():
        assert torch.equal(got["fog." + k], v)
    pre_sum = sum(float(t.sum()) for t in local.pretrained_state().values())
    assert res["full_pretrained"] == pytest.approx(pre_sum)
    assert res["subset"] == ["fog"]
    # one signature, from a cache that holds nothing else
    assert res["partial"] == "contrast"
    assert res["partial_full_model"] == "ArtifactError: config.json: missing"
    # tampering: a damaged signature blob is refused by name, the rest load
    assert res["tampered"]["names"] == ["gaussian_noise", "contrast"]
    assert list(res["tampered"]["refused"]) == ["signatures/fog.safetensors"]
    assert "sha256 mismatch" in res["tampered"]["refused"]["signatures/fog.safetensors"]
    assert res["tampered_sig"].startswith("ArtifactError: signatures/fog.safetensors: sha256")
    assert res["tampered_model"].startswith("ArtifactError: model.safetensors: sha256 mismatch")
    assert res["unknown_repo"].startswith("LocalEntryNotFoundError")
    # pull into a local dir (copied from the cache when offline), and the CLI verb
    assert ModelFolder.load(res["pull_local_dir"]).signature_names() == list(NAMES)
    assert res["cli_pull"] == 0
    cli_line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    assert json.loads(cli_line)["signatures"] == list(NAMES)
    assert read_manifest(out / "cli") == read_manifest(built)


REFERENCE_SCRIPT = """
import json
from rws_hub.io.folder import ModelFolder
from rws_hub.io.hub import from_pretrained, pull
folder = from_pretrained("owner/other-data")
plain = ModelFolder.load(pull("owner/other-data"))
print("RESULT " + json.dumps({"names": folder.signature_names(), "refused": folder.refused,
                              "plain": plain.refused}))
"""


def test_a_referenced_signature_set_comes_from_its_hub_repo(built: Path, tmp_path: Path) -> None:
    """A hub snapshot has no sibling folders: the set a folder references by lineage is
    downloaded from the reference's ``repo_id`` (here: from the offline cache)."""
    from rws_hub.io.folder import SIGNATURE_SETS, save_model_folder

    src = ModelFolder.load(built)
    ref = {"folder": "../tiny", "repo_id": "owner/tiny", "prefix": "c10."}
    ref["lineage"] = src.config["lineage"]
    config = {k: src.config[k] for k in ("architecture", "width", "lineage")}
    other = save_model_folder(
        tmp_path / "other", model=src.model, config=config | {SIGNATURE_SETS: [ref]}
    )
    hub_cache = tmp_path / "hf" / "hub"
    populate_hf_cache(built, hub_cache, "owner/tiny")
    populate_hf_cache(other, hub_cache, "owner/other-data")
    proc = run_python(
        REFERENCE_SCRIPT,
        {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT ") :])
    assert res["names"] == [f"c10.{n}" for n in NAMES] and res["refused"] == {}
    # without the hub (a plain load of the snapshot) the set is refused and says where it was
    (reason,) = res["plain"].values()
    assert "no such folder" in reason and "owner/tiny" in reason


# -- push -------------------------------------------------------------------------------------


def test_push_refuses_damaged_folder(built: Path, tmp_path: Path) -> None:
    files = upload_files(built)
    assert files == sorted(read_manifest(built)) + ["manifest.json"]
    bad = Path(shutil.copytree(built, tmp_path / "bad"))
    flip_byte(bad / signature_file("fog"))
    with pytest.raises(ArtifactError, match="signatures/fog.safetensors: sha256 mismatch"):
        push_to_hub(bad, "owner/tiny")  # refused before any network call


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_push_to_closed_port_fails_at_the_network(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the suite may run with HF_HUB_OFFLINE=1 (read at import): this test needs the online path
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(Exception) as info:  # the HTTP client's connection error
        push_to_hub(built, "owner/tiny", token="hf_test", endpoint=endpoint)
    assert type(info.value).__name__ == "ConnectError", repr(info.value)
    assert "refused" in str(info.value).lower()


class _StandIn(BaseHTTPRequestHandler):
    """Answers the five hub endpoints a push uses; records every request."""

    def _answer(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        self.server.requests.append((self.command, self.path, body))  # type: ignore[attr-defined]
        path = self.path.split("?")[0]
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if path == "/api/repos/create":
            out: object = {"url": f"{base}/owner/tiny", "name": "owner/tiny"}
        elif path.startswith("/api/models/owner/tiny/tree/"):
            out = [
                {"type": "file", "path": "signatures/stale.safetensors", "size": 3, "oid": "0" * 40}
            ]
        elif path == "/api/validate-yaml":
            out = {}
        elif path.startswith("/api/models/owner/tiny/preupload/"):
            files = json.loads(body)["files"]
            out = {
                "files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                    for f in files
                ]
            }
        elif path.startswith("/api/models/owner/tiny/commit/"):
            out = {"commitUrl": f"{base}/owner/tiny/commit/{'a' * 40}", "commitOid": "a" * 40}
        else:
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stand_in():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_push_through_the_client(built: Path, tmp_path: Path, stand_in) -> None:
    endpoint = f"http://127.0.0.1:{stand_in.server_address[1]}"
    code = (
        "from rws_hub.cli import main\n"
        f"print('EXIT', main(['push', {str(built)!r}, 'owner/tiny', '--private', "
        "'--token', 'hf_test']))\n"
    )
    proc = run_python(code, {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "EXIT 0" in proc.stdout and f"{endpoint}/owner/tiny/commit/" in proc.stdout

    calls = {(m, p.split("?")[0]): b for m, p, b in stand_in.requests}
    create = json.loads(calls[("POST", "/api/repos/create")])
    assert create["name"] == "tiny" and create["organization"] == "owner"
    assert create["visibility"] == "private" and create["type"] == "model"
    yaml_check = json.loads(calls[("POST", "/api/validate-yaml")])
    assert yaml_check["content"] == (built / "README.md").read_text()
    commit = [
        json.loads(line)
        for line in calls[("POST", "/api/models/owner/tiny/commit/main")].splitlines()
    ]
    files = {
        c["value"]["path"]: base64.b64decode(c["value"]["content"])
        for c in commit
        if c["key"] == "file"
    }
    # exactly the folder's files, byte for byte
    assert sorted(files) == sorted(upload_files(built))
    for rel, data in files.items():
        assert data == (built / rel).read_bytes(), rel
    deleted = [c["value"]["path"] for c in commit if c["key"] == "deletedFile"]
    assert deleted == ["signatures/stale.safetensors"]
