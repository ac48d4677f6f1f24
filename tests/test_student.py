"""`distill-data train` / dd.train: students from real data or stored sets, distilled
from teachers, quantized four ways; the saved integer student predicts as trained; every
error path is one line; a killed run resumes to the same student."""

from __future__ import annotations

import copy
import importlib
import json

import pytest
import torch
from test_cli import assert_one_error_line

import distill_data as dd
from distill_data.errors import ConfigError
from distill_data.models import load_model
from distill_data.quant.student import load_student
from distill_data.train.fit import fit as real_fit_function
from distill_data.train.student import StudentConfig, _Ensemble, parse_student_bits

# ``distill_data.train`` is the dd.train function at the package level; the module by name
STUDENT_MODULE = importlib.import_module("distill_data.train.student")
TINY = ["--set", "width=4", "--epochs", 2, "-q"]


@pytest.mark.parametrize(
    "quant, bits",
    [("none", None), ("qat", "w4a4"), ("lsq", "w3a4"), ("qd", "w2"), ("dq", "w2")],
)
def test_train_every_mode_from_real_data_with_a_teacher(
    run_cli, tiny_npz, teacher_file, tmp_path, quant, bits
):
    out, rep = tmp_path / "s.pt", tmp_path / "s.json"
    args = ["train", "-d", tiny_npz, "--teacher", teacher_file, "--quant", quant, "--out", out,
            "--json", rep, *TINY, *(["--bits", bits] if bits else [])]  # fmt: skip
    code, stdout, err = run_cli(*args)
    assert code == 0, err
    report = json.loads(rep.read_text())
    assert report["kind"] == "distill-data student" and report["epochs"] == 2
    assert report["teacher"]["count"] == 1 and "hinton KD from the teacher" in report["loss"]
    assert report["seconds_per_epoch"] > 0 and 0 <= report["test_accuracy"] <= 100
    # what a diff of two reports needs: the teacher file, every setting, when and where
    assert report["teacher"]["files"] == [str(teacher_file)]
    assert report["settings"]["student"]["quant"] == quant
    assert report["settings"]["recipe"]["epochs"] == 2 and "seed" in report["settings"]["student"]
    assert report["created"][:2] == "20" and report["machine"]["torch"]
    if quant != "none":  # the settings its method reads, not the others' defaults
        q = report["quant"]
        assert ("fold_bn" in q) == (quant in ("qat", "lsq"))
        assert ("step_init" in q) == (quant == "lsq") and ("bucket_size" in q) == (
            quant in ("qd", "dq")
        )
    if quant == "none":
        model, meta = load_model(out)
        assert meta["student_config"]["quant"] == "none"
        # the float line names the same fp32 baseline `inspect` and the quantized runs use
        params = sum(p.numel() for p in model.parameters())
        assert report["fp32_bytes"] == 4 * params < report["payload_bytes"]  # + BN buffers
        assert f"fp32 parameters {4 * params:,} bytes" in stdout
        code, shown, err = run_cli("inspect", out, "--json")
        assert code == 0 and json.loads(shown)["fp32_bytes"] == report["fp32_bytes"], err
        return
    integer = report["integer_student"]
    assert integer["top1_agreement_with_fake_quant"] == 100.0
    assert integer["max_abs_logit_difference"] == 0.0
    assert integer["test_accuracy"] == report["test_accuracy"]
    assert report["quant"]["method"] == quant and "float_test_accuracy" in report
    model, payload = load_student(out)
    assert payload["meta"]["classes"] and payload["spec"]["method"] == quant
    assert "predicts as trained on 100.00 %" in stdout


def test_train_from_a_stored_set_uses_its_labels_and_logits(run_cli, tiny_npz, teacher_file,
                                                            tmp_path):  # fmt: skip
    soft = tmp_path / "sre2l.h5"
    dd.build(str(tiny_npz), "sre2l", 2, soft, teacher=teacher_file, quiet=True,
             options={"iterations": 2})  # fmt: skip
    hard = tmp_path / "herding.h5"
    dd.build(str(tiny_npz), "herding", 2, hard, quiet=True)
    r = dd.train(str(tiny_npz), tmp_path / "a.pt", data=soft, width=4, options={"epochs": 1},
                 quiet=True)  # fmt: skip
    assert r["loss"] == "hinton KD from the stored logits" and r["data"]["images"] == 6
    assert r["data"]["generator"] == "sre2l"
    r = dd.train(None, tmp_path / "b.pt", data=hard, width=4, options={"epochs": 1},
                 quiet=True)  # fmt: skip
    assert r["loss"] == "cross-entropy on the labels" and r["dataset"] == "tiny.npz"


def test_kd_none_with_a_teacher_says_so_and_spends_no_teacher_forwards(
    tiny_npz, teacher_file, tmp_path
):
    from distill_data.models import load_model

    teacher, _ = load_model(teacher_file)
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    r = dd.train(str(tiny_npz), tmp_path / "s.pt", teacher=teacher, kd="none", width=4,
                 options={"epochs": 1}, quiet=True)  # fmt: skip
    assert r["loss"] == "cross-entropy on the labels (kd none: no distillation)"
    none_calls = len(calls)  # the report's test passes only
    calls.clear()
    r = dd.train(str(tiny_npz), tmp_path / "k.pt", teacher=teacher, width=4,
                 options={"epochs": 1}, quiet=True)  # fmt: skip
    assert "KD from the teacher" in r["loss"]
    assert len(calls) > none_calls  # plus one teacher forward per training batch


def test_zero_shot_qat_from_a_data_free_set(run_cli, tiny_npz, teacher_file, tmp_path,
                                            monkeypatch):  # fmt: skip
    calib = tmp_path / "zeroq.h5"
    dd.build(None, "zeroq", None, calib, teacher=teacher_file, count=8, quiet=True,
             options={"iterations": 2, "batch_size": 8})  # fmt: skip
    out = tmp_path / "zs.pt"
    res = run_cli("train", "--data", calib, "--out", out, "--quant", "lsq", "--bits", "w4a4",
                  "-d", tiny_npz)  # fmt: skip
    assert_one_error_line(*res)
    assert "data-free calibration set" in res[2] and "--teacher" in res[2]
    seen = []
    real_fit = real_fit_function

    def spy(model, data, recipe, **kw):
        seen.append(data.images)
        return real_fit(model, data, recipe, **kw)

    monkeypatch.setattr(STUDENT_MODULE, "fit", spy)
    r = dd.train(str(tiny_npz), out, data=calib, teacher=teacher_file, init="teacher",
                 quant="lsq", bits="w4a4", recipe="zsqat", feature_weight=1.0,
                 options={"epochs": 2}, quiet=True)  # fmt: skip
    assert len(seen) == 1 and len(seen[0]) == 8  # trained on the 8 synthetic images only
    assert r["data"]["count"] == 8 and r["integer_student"]["max_abs_logit_difference"] == 0.0
    assert r["student"]["parameters"] == r["teacher"]["parameters"]  # the teacher itself
    assert r["quant"]["step_init"] == "mse"  # a trained start: where MSE PTQ would put it


def test_freeze_weights_trains_steps_biases_and_batchnorm_but_no_weight(tiny_npz, teacher_file,
                                                                         tmp_path):  # fmt: skip
    """Zero-shot LSQ with ``freeze_weights``: every convolution and linear weight leaves
    training bit-equal to the teacher's; the steps, biases and BatchNorm's affine
    parameters move; the report counts only what trained."""
    seen = {}
    real_fit = real_fit_function

    def spy(model, data, recipe, **kw):
        seen["model"] = model
        seen["before"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return real_fit(model, data, recipe, **kw)

    kw = {"teacher": teacher_file, "init": "teacher", "quant": "lsq", "bits": "w4a4",
          "recipe": "zsqat", "options": {"epochs": 2}, "quiet": True}  # fmt: skip
    mp = pytest.MonkeyPatch()
    mp.setattr(STUDENT_MODULE, "fit", spy)
    try:
        r = dd.train(str(tiny_npz), tmp_path / "f.pt", data="real:16", freeze_weights=True, **kw)
    finally:
        mp.undo()
    teacher, _ = load_model(teacher_file)
    t_weights = {n: p for n, p in teacher.named_parameters() if n.endswith("weight")}
    moved, kept = set(), set()
    for n, p in seen["model"].named_parameters():
        (moved if not torch.equal(p.detach(), seen["before"][n]) else kept).add(n)
    weights = {n for n in kept if n.endswith("layer.weight")}
    assert weights and not any(n.endswith("layer.weight") for n in moved)
    for n in weights:  # "stem.0.layer.weight" is the teacher's "stem.0.weight", unchanged
        assert torch.equal(seen["model"].get_parameter(n).detach(),
                           t_weights[n.replace("layer.", "")])  # fmt: skip
    assert any(n.endswith(".step") for n in moved)
    assert any(".bn." in n for n in moved) and any(n.endswith("bias") for n in moved)
    frozen = sum(seen["model"].get_parameter(n).numel() for n in weights)
    assert r["student"]["trained_parameters"] == sum(
        p.numel() for p in seen["model"].parameters()) - frozen  # fmt: skip
    assert r["integer_student"]["max_abs_logit_difference"] == 0.0
    r_all = dd.train(str(tiny_npz), tmp_path / "a.pt", data="real:16", **kw)
    assert r_all["student"]["trained_parameters"] > r["student"]["trained_parameters"]
    head = STUDENT_MODULE.format_student_report(r).splitlines()[0]
    assert f"{r['student']['trained_parameters']:,} trained)" in head


def test_the_feature_term_matches_each_layer_with_the_teachers_output_there(teacher_file):
    """A quantized copy of the teacher at 8 bits reproduces the teacher's features, so
    the feature MSE is tiny; matched against the wrong place (the conv before its
    BatchNorm) it would not be."""
    from distill_data.quant.qat import QuantSpec, freeze_batchnorm, quant_layers, quantize_

    teacher, _ = load_model(teacher_file)
    teacher.eval()
    student = quantize_(copy.deepcopy(teacher), QuantSpec(method="qat", w_bits=8, a_bits=8))
    freeze_batchnorm(student)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 10, 10, generator=g)
    student.train()
    with torch.no_grad():
        student(x)  # activation ranges
    student.eval()
    cfg = StudentConfig(quant="qat", bits="w8a8", feature_weight=1.0, init="teacher")
    aux, remove = STUDENT_MODULE._feature_term(student, teacher, cfg)
    try:
        with torch.no_grad():
            student(x), teacher(x)
        close = float(aux())
        assert close < 1e-3
        # every layer is compared, the last one too: moving only its weights shows up
        last = list(quant_layers(student).values())[-1]
        with torch.no_grad():
            last.layer.weight.add_(torch.randn(last.layer.weight.shape, generator=g))
            student(x), teacher(x)
        assert float(aux()) > 50 * close
    finally:
        remove()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--model", "vit"], "'vit' is not one of"),
        (["--quant", "lsq", "--bits", "w9a9"], "w_bits must be an integer from 2 to 8"),
        (["--quant", "qd", "--bits", "w4a4"], "quantizes weights only"),
        (["--bits", "w4a4"], "needs a quant method"),
        (["--set", "init=teacher"], "init=teacher needs a teacher"),
        (["--set", "nope=1"], "unknown setting nope; student settings: bits"),
        (["--set", "freeze_weight=1"], "did you mean freeze_weights (not freeze_weight)?"),
        (["--set", "temprature=2"], "recipe settings: augment"),
        (["--kd", "crd"], "'crd' is not one of"),
        (["--set", "lr=nan"], "lr must be a finite number"),
        (["--quant", "qd", "--set", "freeze_weights=true"], "freeze_weights is a setting of"),
        (["--quant", "lsq", "--set", "freeze_weights=true"], "init=scratch has none to keep"),
    ],
)
def test_train_error_paths_are_one_line(run_cli, tiny_npz, tmp_path, extra, needle):
    out = tmp_path / "s.pt"
    res = run_cli("train", "-d", tiny_npz, "--out", out, *extra)
    assert_one_error_line(*res)
    assert needle in res[2], res[2]
    assert not out.exists()


def test_a_teacher_for_other_data_is_refused(run_cli, teacher_file, make_npz, tmp_path):
    other = make_npz("four.npz", classes=4)
    res = run_cli("train", "-d", other, "--teacher", teacher_file, "--out", tmp_path / "s.pt")
    assert_one_error_line(*res)
    assert "predicts 3 classes" in res[2]
    bigger = make_npz("big.npz", size=(12, 12))
    res = run_cli("train", "-d", bigger, "--teacher", teacher_file, "--out", tmp_path / "s.pt")
    assert_one_error_line(*res)
    assert "1x10x10 inputs" in res[2]


@pytest.mark.parametrize(
    "settings",
    [
        {"quant": "qat", "bits": "w4a4"},
        {"quant": "qd", "bits": "w2", "stochastic": True},
        {"quant": "lsq", "bits": "w3a4", "kd": "polino"},
    ],
)
def test_a_killed_run_resumes_to_the_same_student(tiny_npz, teacher_file, tmp_path,
                                                  monkeypatch, settings):  # fmt: skip
    # BN statistics and activation ranges freeze at epoch 2; the run dies after it
    kw = {"teacher": teacher_file, "width": 4, "quiet": True, "freeze_bn_at": 0.5,
          "freeze_observers_at": 0.5, "options": {"epochs": 4}, **settings}  # fmt: skip
    whole = tmp_path / "whole.pt"
    dd.train(str(tiny_npz), whole, **kw)
    part = tmp_path / "part.pt"
    real_fit = real_fit_function

    def dying(model, data, recipe, *, epoch_end, **rest):
        def end(ep, state):
            epoch_end(ep, state)
            if ep == 2:
                raise KeyboardInterrupt

        return real_fit(model, data, recipe, epoch_end=end, **rest)

    monkeypatch.setattr(STUDENT_MODULE, "fit", dying)
    with pytest.raises(KeyboardInterrupt):
        dd.train(str(tiny_npz), part, **kw)
    assert not part.exists() and (tmp_path / "part.pt.ckpt.pt").exists()
    monkeypatch.setattr(STUDENT_MODULE, "fit", real_fit)
    dd.train(str(tiny_npz), part, resume=True, **kw)
    a, b = load_student(whole)[0], load_student(part)[0]
    x = torch.randn(6, 1, 10, 10)
    assert torch.equal(a(x), b(x))
    assert not (tmp_path / "part.pt.ckpt.pt").exists()


def test_a_lent_teacher_module_is_not_changed(tiny_npz, teacher_file, tmp_path):
    net, _ = load_model(teacher_file)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    dd.train(str(tiny_npz), tmp_path / "s.pt", teacher=net, quant="lsq", init="teacher",
             options={"epochs": 1}, quiet=True)  # fmt: skip
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_ensemble_target_and_bits_parsing():
    t1, t2 = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    ens = _Ensemble([t1, t2])
    mean_probs = (t1(x).softmax(1) + t2(x).softmax(1)) / 2  # of probabilities, not logits
    torch.testing.assert_close(ens(x).softmax(1), mean_probs)
    assert not torch.allclose(mean_probs, ((t1(x) + t2(x)) / 2).softmax(1), atol=1e-4)
    assert parse_student_bits(None, "qd") == (4, None)
    assert parse_student_bits("W2A8", "lsq") == (2, 8)
    with pytest.raises(ConfigError, match="quantizes activations too"):
        parse_student_bits("w4", "qat")
    with pytest.raises(ConfigError, match="must look like"):
        parse_student_bits("4bit", "qat")
    with pytest.raises(ConfigError, match="dq_weights is a setting of quant=dq"):
        StudentConfig(dq_weights=True)


def test_a_student_setting_among_the_recipe_options_is_named_as_such(tiny_npz, tmp_path):
    with pytest.raises(ConfigError, match="freeze_weights: a student setting, not a recipe"):
        dd.train(str(tiny_npz), tmp_path / "s.pt", options={"freeze_weights": True}, quiet=True)
    # a key of neither family: both are listed, as on the command line
    with pytest.raises(ConfigError, match="student settings: bits.*did you mean temperature"):
        dd.train(str(tiny_npz), tmp_path / "s.pt", options={"temprature": 2}, quiet=True)
    assert not (tmp_path / "s.pt").exists()


def test_lsq_step_init_defaults_to_mse_for_a_trained_start_only():
    assert StudentConfig(quant="lsq").spec().step_init == "lsq"  # from scratch: the paper's
    assert StudentConfig(quant="lsq", init="teacher").spec().step_init == "mse"
    assert StudentConfig(quant="lsq", init="f.pt").spec().step_init == "mse"
    assert StudentConfig(quant="lsq", init="teacher", step_init="lsq").spec().step_init == "lsq"
    assert StudentConfig(quant="qat", init="teacher").spec().step_init == "lsq"  # no steps
    with pytest.raises(ConfigError, match="step_init is an lsq setting"):
        StudentConfig(quant="qd", step_init="mse")


def test_inspect_shows_bits_bytes_and_compression(run_cli, tiny_npz, teacher_file, tmp_path):
    out, rep = tmp_path / "s.pt", tmp_path / "r.json"
    code, text, err = run_cli("train", "-d", tiny_npz, "--teacher", teacher_file, "--quant",
                              "qd", "--bits", "w2", "--out", out, "--json", rep, *TINY)  # fmt: skip
    assert code == 0, err
    report = json.loads(rep.read_text())
    integer = report["integer_student"]
    assert f"{integer['compression']:.2f}x smaller than fp32's {integer['fp32_bytes']:,}" in text
    code, text, err = run_cli("inspect", out)
    assert code == 0, err
    assert "quantized student" in text and "x smaller than fp32" in text and "bucket" in text
    code, text, _ = run_cli("inspect", out, "--json")
    info = json.loads(text)
    assert {r["bits"] for r in info["layers"]} == {2, 8}
    # the file and the report that made it give the same sizes against the same baseline
    assert info["parameters"] == report["student"]["parameters"]
    assert info["payload_bytes"] == integer["payload_bytes"] < info["fp32_bytes"]
    assert info["fp32_bytes"] == integer["fp32_bytes"]
    assert info["compression"] == integer["compression"]  # a number, in both
    assert info["file_bytes"] == integer["file_bytes"]
    code, text, _ = run_cli("inspect", teacher_file)
    assert code == 0 and "network (float)" in text
    # a student where a float network belongs, and a damaged .pt, are named as such
    code, _, err = run_cli("quantize", "--teacher", out, "--calib", "noise:4")
    assert code == 2 and "is a quantized student" in err and err.count("\n") == 1
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    code, _, err = run_cli("inspect", tmp_path / "bad.pt")
    assert code == 2 and "not a readable distill-data model file" in err, err


def test_dq_allocation_moves_points_by_gradient_norm_and_keeps_the_total(tiny_npz, tmp_path):
    r = dd.train(str(tiny_npz), tmp_path / "s.pt", model="resnet", width=4, quant="dq",
                 bits="w2", dq_allocate=True, options={"epochs": 1}, quiet=True)  # fmt: skip
    alloc = r["quant"]["points_allocation"]
    before = [b for b, _, _ in alloc.values()]
    after = [a for _, a, _ in alloc.values()]
    assert len(alloc) >= 10 and set(before) == {4}  # the body at 2 bits, first/last apart
    assert sum(after) == sum(before) and min(after) >= 2  # total kept, half as a floor
    norms = [n for _, _, n in alloc.values()]
    most, least = norms.index(max(norms)), norms.index(min(norms))
    assert after[most] >= after[least]
    _, payload = load_student(tmp_path / "s.pt")
    points = {n: layer["weight"]["points"].numel() for n, layer in payload["layers"].items()}
    assert all(points[n] == a for n, (_, a, _) in alloc.items())


def test_qd_updates_the_shadow_weights_while_the_used_weights_stay_on_the_grid(tiny_npz):
    from distill_data.models import build_model
    from distill_data.quant.qat import QuantSpec, quant_layers, quantize_
    from distill_data.train import TrainData, TrainRecipe, fit

    data = dd.data.load_dataset(tiny_npz)
    torch.manual_seed(0)
    spec = QuantSpec(method="qd", w_bits=2, a_bits=None, first_last_bits=None)
    student = quantize_(build_model("convnet_bn", 1, 3, (10, 10), width=4), spec)
    q = quant_layers(student)["features.4"]
    shadow_before = q.layer.weight.detach().clone()
    train = TrainData(data.normalize(data.x_train), data.y_train, space=data)
    recipe = TrainRecipe(epochs=2, batch_size=6, augment="none")
    fit(student, train, recipe, generator=torch.Generator())
    shadow = q.layer.weight.detach()
    assert not torch.equal(shadow, shadow_before)  # the update lands on the float weights
    used = q.wq(shadow).reshape(-1)
    assert not torch.equal(used, shadow.reshape(-1))
    for bucket in used.split(256):  # ... and what the layer computes with has 4 levels
        assert bucket.unique().numel() <= 4


def test_a_student_can_start_from_a_network_file(tiny_npz, teacher_file, tmp_path, monkeypatch):
    float_student = tmp_path / "float.pt"
    dd.train(str(tiny_npz), float_student, width=4, options={"epochs": 1}, quiet=True)
    start = {}

    def spy(model, data, recipe, **kw):  # the weights training starts from
        start.update({k: v.clone() for k, v in model.state_dict().items()})
        return real_fit_function(model, data, recipe, **kw)

    monkeypatch.setattr(STUDENT_MODULE, "fit", spy)
    r = dd.train(str(tiny_npz), tmp_path / "dq.pt", teacher=teacher_file, quant="dq", bits="w2",
                 init=str(float_student), options={"epochs": 1}, quiet=True)  # fmt: skip
    assert r["student"]["config"]["width"] == 4
    model, _ = load_model(float_student)
    want = model.state_dict()
    got = {k.replace("layer.", ""): v for k, v in start.items()}
    assert set(want) <= set(got)
    assert all(torch.equal(got[k], v) for k, v in want.items())  # the file's weights
    with pytest.raises(ConfigError, match="refusing to write"):
        dd.train(str(tiny_npz), float_student, init=str(float_student), quant="dq",
                 options={"epochs": 1}, quiet=True)  # fmt: skip
    with pytest.raises(ConfigError, match="no such network file"):
        dd.train(str(tiny_npz), tmp_path / "x.pt", init="missing.pt", quiet=True)


def test_students_from_real_and_noise_samples(tiny_npz, teacher_file, tmp_path):
    r = dd.train(str(tiny_npz), tmp_path / "r.pt", data="real:6", width=4,
                 options={"epochs": 1}, quiet=True)  # fmt: skip
    assert r["data"]["images"] == 6 and r["loss"] == "cross-entropy on the labels"
    with pytest.raises(ConfigError, match="data-free calibration set"):
        dd.train(str(tiny_npz), tmp_path / "n.pt", data="noise:8", quiet=True)
    seen = []

    def spy(model, data, recipe, **kw):
        seen.append((data.images.clone(), data.labels.clone()))
        return real_fit_function(model, data, recipe, **kw)

    import distill_data.train.student  # noqa: F401 - the module, for the spy below

    orig = STUDENT_MODULE.fit
    STUDENT_MODULE.fit = spy
    try:
        r = dd.train(str(tiny_npz), tmp_path / "n.pt", data="noise:8", teacher=teacher_file,
                     init="teacher", quant="lsq", options={"epochs": 1}, quiet=True)  # fmt: skip
    finally:
        STUDENT_MODULE.fit = orig
    assert r["data"]["source"] == "noise:8" and r["data"]["count"] == 8
    net, _ = load_model(teacher_file)
    images, labels = seen[0]
    with torch.no_grad():  # noise has no class: the teacher's predictions label it
        assert torch.equal(labels, net.eval()(images).argmax(1))


def test_a_teacher_without_batchnorm_can_teach(tiny_npz, tmp_path):
    from distill_data.models import build_model, save_model

    mlp = build_model("mlp", 1, 3, (10, 10), width=8)
    save_model(mlp, tmp_path / "mlp.pt", meta={"input_shape": [1, 10, 10]})
    r = dd.train(str(tiny_npz), tmp_path / "s.pt", teacher=tmp_path / "mlp.pt", width=4,
                 options={"epochs": 1}, quiet=True)  # fmt: skip
    assert r["teacher"]["count"] == 1
    with pytest.raises(ConfigError, match="unmixed labels"):
        dd.train(str(tiny_npz), tmp_path / "m.pt", teacher=tmp_path / "mlp.pt",
                 options={"mix": "mixup", "mix_alpha": 0.8}, quiet=True)  # fmt: skip


def test_batchnorm_statistics_kept_or_frozen_from_a_trained_start(
    tiny_npz, teacher_file, tmp_path, monkeypatch
):
    """keep_bn_stats: the running statistics the teacher came with survive the fine-tune;
    freeze_bn_at: every BatchNorm (folded or not) is in eval mode in every training step
    after the freeze, although fit() calls model.train() each epoch."""
    teacher, _ = load_model(teacher_file)
    before = {k: v.clone() for k, v in teacher.state_dict().items() if "running_" in k}
    modes = []
    real_fit = real_fit_function

    def spy(model, data, recipe, **kw):
        start = kw["epoch_start"]

        def epoch_start(ep):
            start(ep)
            bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
            modes.append((ep, [m.training for m in bns]))

        return real_fit(model, data, recipe, **{**kw, "epoch_start": epoch_start})

    monkeypatch.setattr(STUDENT_MODULE, "fit", spy)
    out = tmp_path / "keep.pt"
    dd.train(str(tiny_npz), out, teacher=teacher_file, init="teacher", quant="qd", bits="w4",
             keep_bn_stats=True, options={"epochs": 2}, quiet=True)  # fmt: skip
    kept, _ = load_student(out)
    after = {k: v for k, v in kept.state_dict().items() if "running_" in k}
    assert before and all(torch.equal(before[k], after[k]) for k in before)
    assert all(all(flags) for _, flags in modes)  # kept, not frozen: batch statistics used
    modes.clear()
    dd.train(str(tiny_npz), tmp_path / "frozen.pt", teacher=teacher_file, init="teacher",
             quant="qd", bits="w4", freeze_bn_at=0.5, options={"epochs": 4},
             quiet=True)  # fmt: skip
    assert [ep for ep, flags in modes if not any(flags)] == [2, 3]  # unfolded BNs too (qd)
    assert all(all(flags) for ep, flags in modes if ep < 2)


def test_dd_train_describes_itself_and_points_recipe_settings_to_options(tiny_npz, tmp_path):
    import inspect
    import pydoc

    params = inspect.signature(dd.train).parameters
    assert {"dataset", "out", "teacher", "options"} <= set(params)
    assert "Train a student" in pydoc.render_doc(dd.train, renderer=pydoc.plaintext)
    with pytest.raises(
        ConfigError, match=r"epochs: a recipe setting.*options \(\{'epochs': \.\.\.\}\)"
    ):
        dd.train(str(tiny_npz), tmp_path / "s.pt", epochs=1, quiet=True)
    assert not (tmp_path / "s.pt").exists()


def test_train_takes_seed_as_an_option_like_the_other_commands(run_cli, tiny_npz, tmp_path):
    out, rep = tmp_path / "s.pt", tmp_path / "r.json"
    code, _, err = run_cli("train", "-d", tiny_npz, "--out", out, "--json", rep, "--seed", 3,
                           *TINY)  # fmt: skip
    assert code == 0, err
    assert json.loads(rep.read_text())["settings"]["student"]["seed"] == 3
    code, _, err = run_cli("train", "-d", tiny_npz, "--out", tmp_path / "t.pt", "--seed", 1,
                           "--set", "seed=2", *TINY)  # fmt: skip
    assert code == 2 and "seed is given twice" in err and err.count("\n") == 1


def test_kd_is_given_once(run_cli, tiny_npz, teacher_file, tmp_path):
    code, _, err = run_cli("train", "-d", tiny_npz, "--teacher", teacher_file, "--kd", "polino",
                           "--set", "kd=hinton", "--out", tmp_path / "s.pt", *TINY)  # fmt: skip
    assert code == 2 and "kd is given twice (--kd and --set kd)" in err and err.count("\n") == 1
    with pytest.raises(ConfigError, match=r"kd is given twice \(kd and options\['kd'\]\)"):
        dd.train(str(tiny_npz), tmp_path / "s.pt", kd="polino", options={"kd": "hinton"})
