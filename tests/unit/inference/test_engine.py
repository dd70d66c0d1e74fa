"""Engine: per-image mixes in one batch equal one-at-a-time in-place patching."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from rws_hub.archs import create_model
from rws_hub.core.mix import Mix
from rws_hub.core.patching import patch
from rws_hub.core.signature import Signature
from rws_hub.datasets import get_dataset
from rws_hub.errors import InvalidMixError, RequestError, SignatureMismatchError
from rws_hub.inference.engine import Engine

NAMES = ("gaussian_noise", "fog", "contrast", "pixelate")
ATOL = 1e-4


def tiny_signatures(model: torch.nn.Module, k: int = 3, seed: int = 0) -> dict[str, Signature]:
    """Random deltas on the first ``k`` conv layers (weight and bias); one layer fewer for the
    last signature, so signatures touch different sets of tensors."""
    gen = torch.Generator().manual_seed(seed)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    sd = model.state_dict()
    sigs = {}
    for i, name in enumerate(NAMES):
        layers = convs[: k - 1] if i == len(NAMES) - 1 else convs[:k]
        tensors = {}
        for layer in layers:
            for t in ("weight", "bias"):
                ref = sd[f"{layer}.{t}"]
                scale = 0.3 * (ref.std() if ref.numel() > 1 and ref.std() > 0 else 0.05)
                tensors[f"{layer}.{t}"] = torch.randn(ref.shape, generator=gen) * scale + 0.01
        sigs[name] = Signature(name, tensors, layers=len(layers), default_alpha=0.5 + 0.25 * i)
    return sigs


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, dict[str, Signature]]:
    torch.manual_seed(0)
    model = create_model("vgg16_cifar", width=0.125).eval()
    # Non-zero biases so bias deltas matter as much as weight deltas.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.bias.normal_(0, 0.05)
    return model, tiny_signatures(model)


@pytest.fixture(scope="module")
def engine(setup) -> Engine:
    model, sigs = setup
    return Engine(model, sigs, classes=get_dataset("cifar10").classes, device="cpu")


def reference(model, sigs, images, mixes) -> torch.Tensor:
    """Each image alone through the model patched in place with rws_hub.core.patching.patch."""
    outs = []
    with torch.no_grad():
        for img, mix in zip(images, mixes, strict=True):
            with patch(model, Mix(mix or {}), signatures=sigs):
                outs.append(model(img[None]))
    return torch.cat(outs)


def random_mixes(n: int, seed: int) -> list[dict[str, float]]:
    rng = random.Random(seed)
    mixes = []
    for _ in range(n):
        names = rng.sample(NAMES, rng.randint(0, 3))
        mixes.append({name: round(rng.uniform(0.1, 2.0), 3) for name in names})
    return mixes


def test_batch_matches_one_at_a_time_patching(setup, engine):
    model, sigs = setup
    images = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mixes = random_mixes(20, seed=2)
    # duplicates, empty mixes, a zero alpha, and a list of names (default alphas)
    mixes += [mixes[0], {}, {"fog": 0.0}, ["fog", "contrast"]]
    want = reference(model, sigs, images, [engine.parse_mix(m) for m in mixes])
    got = engine.predict(images, mixes)
    assert got.shape == (24, 10)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)
    # and the patches really change the answers (the test can fail)
    clean = engine.predict(images, [None] * 24)
    assert (clean - got).abs().amax(dim=1)[:20].max() > 1e-3


def test_mix_forms_and_defaults(setup, engine):
    model, sigs = setup
    images = torch.rand(1, 3, 32, 32).expand(4, 3, 32, 32)
    forms = [["fog"], "fog", {"fog": sigs["fog"].default_alpha}, Mix({"fog": 0.75})]
    out = engine.predict(images, forms)
    torch.testing.assert_close(out[0], out[1])
    torch.testing.assert_close(out[0], out[2])
    torch.testing.assert_close(out[0], out[3])
    # a single mix for the whole batch
    torch.testing.assert_close(engine.predict(images, "fog:0.75"), out)


def test_single_group_and_clean_paths(setup, engine):
    model, sigs = setup
    images = torch.rand(6, 3, 32, 32)
    mix = {"gaussian_noise": 1.5, "pixelate": 0.5}
    want = reference(model, sigs, images, [Mix(mix)] * 6)
    torch.testing.assert_close(engine.predict(images, [mix] * 6), want, atol=ATOL, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(engine.predict(images), model(images), atol=ATOL, rtol=1e-4)


def test_threads_equal_serial(engine):
    jobs = []
    for i in range(12):
        gen = torch.Generator().manual_seed(100 + i)
        jobs.append((torch.rand(8, 3, 32, 32, generator=gen), random_mixes(8, seed=100 + i)))
    serial = [engine.predict(x, m) for x, m in jobs]
    barrier = threading.Barrier(4)

    def run(job):
        barrier.wait() if job[2] < 4 else None
        return engine.predict(job[0], job[1])

    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(run, [(x, m, i) for i, (x, m) in enumerate(jobs)]))
    for a, b in zip(serial, concurrent, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_weights_stay_clean_after_errors(engine):
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    with pytest.raises(RuntimeError):
        engine.predict(torch.rand(3, 4, 32, 32), [{"fog": 1.0}, {}, {"contrast": 2.0}])
    with pytest.raises(InvalidMixError, match="unknown signature 'snow'.*known: contrast, fog"):
        engine.predict(torch.rand(2, 3, 32, 32), [{"fog": 1.0}, {"snow": 1.0}])
    for bad in ({"fog": float("nan")}, {"fog": float("inf")}, {"fog": -1.0}, {"fog": True}):
        with pytest.raises(InvalidMixError):
            engine.predict(torch.rand(1, 3, 32, 32), [bad])
    after = engine.model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    # the routing plan never leaks into the next call on this thread
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        base = Engine(engine.model, {}, device="cpu").predict(x)
    torch.testing.assert_close(engine.predict(x), base, atol=0, rtol=0)


def test_callers_model_untouched(setup):
    model, sigs = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eng = Engine(model, sigs, device="cpu")
    eng.predict(torch.rand(4, 3, 32, 32), random_mixes(4, seed=5))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(type(m).__name__.startswith("_Routed") for m in model.modules())
    assert list(eng.model.state_dict()) == list(model.state_dict())
    assert sum(type(m).__name__ == "_RoutedConv2d" for m in eng.model.modules()) == 3


def test_limits_and_auto_hook(setup):
    model, sigs = setup
    eng = Engine(model, sigs, device="cpu", max_alpha=2.0, allow_negative=True)
    with pytest.raises(InvalidMixError, match="above the maximum"):
        eng.parse_mix({"fog": 2.5})
    assert eng.parse_mix({"fog": -1.0}) == Mix({"fog": -1.0})
    with pytest.raises(RequestError, match="auto") as info:
        eng.predict(torch.rand(2, 3, 32, 32), ["auto", {}])
    assert info.value.status == 400

    def detector(images):
        return [{"fog": 1.0} if float(img.mean()) > 0.5 else {} for img in images]

    eng_auto = Engine(model, sigs, device="cpu", detector=detector)
    x = torch.stack([torch.full((3, 32, 32), 0.8), torch.full((3, 32, 32), 0.2)])
    answers = eng_auto.classify(x, ["auto", "auto"], top_k=2)
    assert answers[0]["mix"] == {"fog": 1.0} and answers[0]["auto"] is True
    assert answers[1]["mix"] == {}
    torch.testing.assert_close(
        eng_auto.predict(x, ["auto", "auto"]), eng_auto.predict(x, [{"fog": 1.0}, {}])
    )


def test_classify(engine):
    x = torch.rand(3, 3, 32, 32)
    answers = engine.classify(x, [{"fog": 1.0}, None, "contrast"], top_k=[3, 20, 1])
    assert [len(a["predictions"]) for a in answers] == [3, 10, 1]
    assert answers[0]["mix"] == {"fog": 1.0}
    assert answers[1]["mix"] == {}
    assert answers[2]["mix"] == {"contrast": 1.0}  # default alpha of "contrast"
    probs = [p["probability"] for p in answers[1]["predictions"]]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5
    assert {p["class"] for p in answers[1]["predictions"]} == set(get_dataset("cifar10").classes)
    logits = engine.predict(x, [{"fog": 1.0}, None, "contrast"])
    assert (
        answers[0]["predictions"][0]["class"]
        == get_dataset("cifar10").classes[int(logits[0].argmax())]
    )


def test_cache_is_bounded_and_reused(setup):
    model, sigs = setup
    one_mix = sum(t.numel() * 4 for t in sigs["fog"].tensors.values())
    eng = Engine(model, sigs, device="cpu", cache_bytes=int(one_mix * 2.5))
    x = torch.rand(1, 3, 32, 32)
    for a in (0.1, 0.2, 0.3, 0.4):
        eng.predict(x, [{"fog": a}])
    assert eng.cache_info()["entries"] == 0  # a mix seen once is not kept
    for a in (0.1, 0.2, 0.3, 0.4):
        eng.predict(x, [{"fog": a}])  # second sighting: admitted, LRU-bounded
    info = eng.cache_info()
    assert info["entries"] == 2 and info["bytes"] <= info["max_bytes"]
    eng.predict(x, [{"fog": 0.4}])
    assert eng.cache_info()["hits"] == 1
    mem = eng.memory_bytes()
    assert mem["cache"] == info["bytes"] and mem["total"] == sum(
        v for k, v in mem.items() if k != "total"
    )
    backbone = sum(t.numel() * 4 for t in model.state_dict().values())
    assert mem["backbone"] == backbone


def test_signature_mismatch(setup):
    model, _ = setup
    with pytest.raises(SignatureMismatchError, match="does not have"):
        Engine(model, [Signature("x", {"features.99.weight": torch.zeros(1)})], device="cpu")
    w = model.state_dict()["features.0.weight"]
    with pytest.raises(SignatureMismatchError, match="shape"):
        Engine(
            model, [Signature("x", {"features.0.weight": torch.zeros(w.shape[0])})], device="cpu"
        )
    with pytest.raises(SignatureMismatchError, match="Conv2d and Linear"):
        Engine(model, [Signature("x", {"normalize.mean": torch.zeros(1, 3, 1, 1)})], device="cpu")


def test_describe(engine):
    info = engine.describe()
    assert [s["name"] for s in info["signatures"]] == list(NAMES)
    assert info["classes"] == list(get_dataset("cifar10").classes)
    fog = info["signatures"][1]
    assert fog["default_alpha"] == 0.75 and fog["layers"] == 3
    assert info["patched_layers"] == ["features.0", "features.2", "features.5"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_matches_cpu(setup, dtype):
    model, sigs = setup
    x = torch.rand(16, 3, 32, 32)
    mixes = random_mixes(16, seed=9)
    cpu = Engine(model, sigs, device="cpu").predict(x, mixes)
    gpu = Engine(model, sigs, device="cuda", dtype=dtype).predict(x, mixes).cpu()
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(gpu, cpu, atol=tol, rtol=tol)


def test_resident_codes_equal_float_and_hold_a_quarter(setup):
    model, sigs = setup
    quant = {
        "gaussian_noise": sigs["gaussian_noise"].quantize(8, granularity="channel"),
        "fog": sigs["fog"].quantize(4, granularity="tensor"),
        "contrast": sigs["contrast"].quantize(8, granularity="tensor"),
        "pixelate": sigs["pixelate"].quantize(8, scheme="log"),  # any registered scheme
    }
    flt = Engine(model, quant, device="cpu", cache_bytes=0)
    cod = Engine(model, quant, device="cpu", cache_bytes=0, resident="codes")
    x = torch.rand(12, 3, 32, 32)
    mixes = random_mixes(12, seed=5)
    # the same float operations: bitwise equal answers
    assert torch.equal(flt.predict(x, mixes), cod.predict(x, mixes))
    torch.testing.assert_close(
        cod.predict(x, mixes), reference(model, quant, x, mixes), atol=ATOL, rtol=ATOL
    )
    mem_f, mem_c = flt.memory_bytes()["signatures"], cod.memory_bytes()["signatures"]
    assert mem_c < 0.27 * mem_f
    # the signatures view rebuilds what was loaded (values and codes)
    view = cod.signatures
    for name, sig in quant.items():
        for t, v in sig.tensors.items():
            assert torch.equal(view[name].tensors[t], v)
        assert view[name].quantization == sig.quantization
    assert view["fog"].codes is not None and view["pixelate"].codes is not None
    assert view["fog"].nbytes == quant["fog"].nbytes
    assert cod.describe()["signatures"] == flt.describe()["signatures"]
    with pytest.raises(ValueError, match="resident"):
        Engine(model, quant, device="cpu", resident="int8")


def test_engine_weights_equal_patch_bitwise(setup) -> None:
    """One kernel: the engine's patched weights are the in-place patch's, bit for bit, and a
    batch under one mix gives the patched model's logits bit for bit."""
    model, sigs = setup
    for resident, these in (
        ("float", sigs),
        ("codes", {n: s.quantize(8) for n, s in sigs.items()}),
    ):
        eng = Engine(model, these, device="cpu", resident=resident, allow_negative=True)
        mix = Mix({"fog": 0.7, "gaussian_noise": -0.3, "contrast": 1.25})
        built = eng._build(mix)
        x = torch.rand(6, 3, 32, 32)
        with patch(model, dict(mix), signatures=these):
            state = model.state_dict()
            for t, w in built.items():
                assert torch.equal(w, state[t]), t
            want = model(x.contiguous(memory_format=torch.channels_last))
        assert torch.equal(eng.predict(x, mix), want)


def test_add_and_drop_signatures_live(setup) -> None:
    model, sigs = setup
    eng = Engine(model, {"fog": sigs["fog"]}, device="cpu")
    x = torch.rand(8, 3, 32, 32)
    with pytest.raises(InvalidMixError, match="unknown signature"):
        eng.predict(x, {"contrast": 1.0})
    stop = threading.Event()
    failures: list[BaseException] = []

    def client() -> None:
        while not stop.is_set():
            try:
                eng.predict(x, [{"fog": 0.5}, None] * 4)
            except BaseException as exc:  # pragma: no cover - reported below
                failures.append(exc)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        eng.add_signature(sigs["contrast"])  # touches the same layers
        eng.add_signature(sigs["pixelate"])
        with pytest.raises(ValueError, match="already loaded"):
            eng.add_signature(sigs["pixelate"])
        eng.drop_signature("pixelate")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures
    torch.testing.assert_close(
        eng.predict(x, {"contrast": 1.0}),
        reference(model, sigs, x, [{"contrast": 1.0}] * 8),
        atol=ATOL,
        rtol=ATOL,
    )
    assert sorted(eng.signatures) == ["contrast", "fog"]
    with pytest.raises(InvalidMixError, match="unknown signature"):
        eng.predict(x, {"pixelate": 1.0})
    with pytest.raises(InvalidMixError, match="unknown signature"):
        eng.drop_signature("pixelate")
    eng.add_signature(sigs["pixelate"].replace(default_alpha=2.0))
    assert eng.defaults["pixelate"] == 2.0


def test_add_signature_routing_new_layers(setup) -> None:
    """A signature on layers no loaded signature touched gets them routed while serving."""
    model, sigs = setup
    eng = Engine(model, {"pixelate": sigs["pixelate"]}, device="cpu")  # k - 1 layers
    before = list(eng.patched_layers)
    eng.add_signature(sigs["fog"])
    assert len(eng.patched_layers) == len(before) + 1
    x = torch.rand(4, 3, 32, 32)
    mixes = [{"fog": 1.0}, {"pixelate": 0.5}, None, {"fog": 0.5, "pixelate": 1.0}]
    torch.testing.assert_close(
        eng.predict(x, mixes), reference(model, sigs, x, mixes), atol=ATOL, rtol=ATOL
    )
    with pytest.raises(SignatureMismatchError):
        eng.add_signature(Signature("bad", {"nope.weight": torch.zeros(1)}))


def test_rows_fail_alone_and_answers_are_finite(setup) -> None:
    """Bad rows (NaN pixels, alpha overflowing float32, outputs gone non-finite, unknown names)
    get their own error; the good rows of the same call get exactly their answers."""
    import json
    import math

    model, sigs = setup
    eng = Engine(model, sigs, device="cpu", max_alpha=math.inf, allow_negative=True)
    x = torch.rand(6, 3, 32, 32)
    x[1, 0, 3, 3] = float("nan")
    mixes = [{"fog": 0.5}, {"fog": 0.5}, {"fog": 1e308}, {"fog": 5e30}, {"nope": 1.0}, None]
    rows = eng.classify_rows(x, mixes, top_k=3)
    assert [getattr(r, "status", 200) for r in rows] == [200, 400, 422, 422, 400, 200]
    assert "NaN" in str(rows[1]) and "nope" in str(rows[4])
    good = eng.classify(x[[0, 5]], [mixes[0], mixes[5]], top_k=3)
    assert [rows[0], rows[5]] == good
    json.dumps(good, allow_nan=False)  # valid JSON: no NaN anywhere
    with pytest.raises(RequestError):
        eng.classify(x, mixes)


def test_default_alpha_bound_and_absurd_signatures(setup, tmp_path) -> None:
    from rws_hub.core.mix import DEFAULT_MAX_ALPHA

    model, sigs = setup
    eng = Engine(model, sigs, device="cpu")
    assert eng.max_alpha == DEFAULT_MAX_ALPHA and eng.describe()["max_alpha"] == DEFAULT_MAX_ALPHA
    with pytest.raises(InvalidMixError, match="above"):
        eng.predict(torch.rand(1, 3, 32, 32), {"fog": 5e6})
    loud = sigs["fog"].replace(name="loud", default_alpha=1e6)
    with pytest.raises(SignatureMismatchError, match="default_alpha"):
        Engine(model, [loud], device="cpu")
    huge = Signature("huge", {k: v * 1e9 for k, v in sigs["fog"].tensors.items()})
    with pytest.raises(SignatureMismatchError, match="sane limit"):
        Engine(model, [huge], device="cpu")
    assert Engine(model, sigs, device="cpu", max_alpha=float("inf")).describe()["max_alpha"] is None


@pytest.mark.parametrize("bits", [None, 8])
def test_low_rank_signatures_served_as_branches(setup, bits) -> None:
    """resident="factors": layers whose deltas are all low-rank run once for the batch plus a
    branch per signature; answers equal in-place patching with the low-rank signatures."""
    model, sigs = setup
    lr = {n: s.low_rank(rank=3, bits=bits) for n, s in sigs.items()}
    eng = Engine(model, lr, device="cpu", resident="factors", allow_negative=True)
    assert eng._branched  # the conv layers
    x = torch.rand(16, 3, 32, 32)
    mixes = random_mixes(16, seed=11)
    torch.testing.assert_close(
        eng.predict(x, mixes), reference(model, lr, x, mixes), atol=ATOL, rtol=ATOL
    )
    every = [{"fog": 0.5, "contrast": -0.25}] * 4
    torch.testing.assert_close(
        eng.predict(x[:4], every), reference(model, lr, x[:4], every), atol=ATOL, rtol=ATOL
    )
    assert eng.cache_info()["entries"] == 0 or eng.memory_bytes()["cache"] < 10_000
    # a dense signature on the same layers turns the branch path off for them
    eng.add_signature(sigs["fog"].replace(name="dense_fog"))
    assert not eng._branched
    mixes = [{"dense_fog": 1.0}, {"fog": 1.0}, None, {"dense_fog": 0.5, "pixelate": 1.0}]
    want = reference(
        model, {**lr, "dense_fog": sigs["fog"].replace(name="dense_fog")}, x[:4], mixes
    )
    torch.testing.assert_close(eng.predict(x[:4], mixes), want, atol=ATOL, rtol=ATOL)


def test_factors_hold_little_memory(setup) -> None:
    model, sigs = setup
    lr = {n: s.low_rank(rank=2, bits=8) for n, s in sigs.items()}
    dense = Engine(model, sigs, device="cpu").memory_bytes()["signatures"]
    held = Engine(model, lr, device="cpu", resident="factors").memory_bytes()["signatures"]
    assert held < dense / 4


@pytest.mark.parametrize("resident", ["float", "factors"])
def test_mixed_batches_stay_channels_last(setup, resident) -> None:
    """Sorting a mixed batch by mix, selecting a signature's rows and adding its branch keep
    the channels-last format the engine runs in (index_select alone drops it, and every later
    conv then runs several times slower on CPU)."""
    model, sigs = setup
    if resident == "factors":
        sigs = {n: s.low_rank(rank=3, bits=8) for n, s in sigs.items()}
    eng = Engine(model, sigs, device="cpu", resident=resident, allow_negative=True)
    formats = []
    hooks = [
        m.register_forward_hook(
            lambda mod, inp, out: formats.append(
                (
                    inp[0].is_contiguous(memory_format=torch.channels_last),
                    out.is_contiguous(memory_format=torch.channels_last),
                )
            )
        )
        for m in eng.model.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    try:
        # repeated mixes apart from each other: the batch is reordered to group them
        mixes = [*random_mixes(3, seed=5), None] * 3
        assert len({str(m) for m in mixes}) > 2
        x = torch.rand(12, 3, 32, 32)
        out = eng.predict(x, mixes)
    finally:
        for h in hooks:
            h.remove()
    assert formats and all(i and o for i, o in formats), formats
    torch.testing.assert_close(out, reference(model, sigs, x, mixes), atol=ATOL, rtol=ATOL)
