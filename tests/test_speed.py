"""Speed work that must not change results: the dense 1x1 paths, fused Adam, channels_last, the
official step, precision and thread choices, compilation, streaming prediction, the benchmark."""

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import synthetic_splits, tiny_config
from numerics import assert_close
from PIL import Image

from skipganomaly.benchmark import BenchmarkSettings, PlainMode, _child_peak, run_benchmark
from skipganomaly.data.base import ImageSet
from skipganomaly.data.loading import iterate_batches, to_model_input
from skipganomaly.deploy.predict import Predictor, predict_to_csv
from skipganomaly.models import SkipGANomaly
from skipganomaly.models.blocks import (
    DenseFastConv2d,
    DenseFastConvTranspose2d,
    concat_channels,
    is_channels_last,
    set_dense_fast_path,
)
from skipganomaly.models.objective import LossWeights
from skipganomaly.runtime import cores, device, precision, threads
from skipganomaly.training.trainer import RunLog, Trainer


def _quiet(config, splits, run_dir):
    return Trainer(config, splits, run_dir, log=lambda s: None, progress=False)


# --------------------------------------------------------------------------- dense 1x1 layers
@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: DenseFastConv2d(12, 10, 4, 2, 1, bias=False), (5, 12, 2, 2)),  # UNet innermost 2x2 -> 1x1
        (lambda: DenseFastConv2d(12, 10, 4, 1, 0, bias=False), (5, 12, 4, 4)),  # D features 4x4 -> 1x1
        (lambda: DenseFastConv2d(12, 1, 1, bias=True), (5, 12, 1, 1)),  # classifier
        (lambda: DenseFastConvTranspose2d(12, 10, 4, 2, 1, bias=False), (5, 12, 1, 1)),  # 1x1 -> 2x2
        (lambda: DenseFastConvTranspose2d(12, 10, 4, 1, 0, bias=True), (5, 12, 1, 1)),  # 1x1 -> 4x4 (DCGAN)
        (lambda: DenseFastConv2d(12, 10, 4, 2, 1, bias=False), (5, 12, 4, 4)),  # UNet 4x4 -> 2x2 (unfold)
        (lambda: DenseFastConv2d(12, 10, 4, 2, 1, bias=True), (5, 12, 3, 4)),  # 3x4 -> 1x2
        (lambda: DenseFastConv2d(12, 10, 3, 1, 1, bias=True), (5, 12, 2, 2)),  # 3x3 "same" on 2x2
        (lambda: DenseFastConvTranspose2d(12, 10, 4, 2, 1, bias=False), (5, 12, 2, 2)),  # 2x2 -> 4x4 (fold)
        (lambda: DenseFastConvTranspose2d(12, 10, 4, 2, 1, bias=True), (5, 12, 1, 2)),  # 1x2 -> 2x4
        (lambda: DenseFastConvTranspose2d(12, 10, 3, 1, 1, bias=True), (5, 12, 2, 2)),  # 3x3 on 2x2
        (lambda: DenseFastConvTranspose2d(12, 10, 4, 2, 1, bias=False), (5, 12, 4, 4)),  # the library's
    ],
)
def test_dense_path_is_the_library_convolution(make, shape):
    torch.manual_seed(0)
    layer = make()
    with torch.no_grad():
        layer.weight.normal_()
        if layer.bias is not None:
            layer.bias.normal_()
    library = set_dense_fast_path(copy.deepcopy(layer), False)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(shape).contiguous(memory_format=memory_format).requires_grad_()
        x_ref = x.detach().clone().requires_grad_()
        out, ref = layer(x), library(x_ref)
        assert out.shape == ref.shape
        assert is_channels_last(out) == is_channels_last(x), "the output keeps the input's memory layout"
        # A matrix product against the library's convolution: the same sums in another order,
        # so the rounding is relative to the terms summed (here about the largest output), not
        # to each output. Measured with AVX-512, AVX2 and scalar ATen kernels, 1 or 2 threads:
        # at most 0.28 of the tolerance without scale_atol, 0.14 with it.
        close = {"rtol": 1e-5, "atol": 1e-5, "scale_atol": 1e-6}
        assert_close(out, ref, **close, name="output")
        grad = torch.randn_like(ref)
        params = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
        library_params = [library.weight] + ([library.bias] if library.bias is not None else [])
        ours = torch.autograd.grad(out, [x, *params], grad)
        theirs = torch.autograd.grad(ref, [x_ref, *library_params], grad)
        for name, a, b in zip(("input", "weight", "bias"), ours, theirs, strict=False):
            assert_close(a, b, **close, name=f"{name} gradient")


def test_concat_channels_is_cat_with_dense_gradients():
    torch.manual_seed(0)
    a = torch.randn(4, 3, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    b = torch.randn(4, 2, 5, 5).requires_grad_()
    out = concat_channels(a, b)
    torch.testing.assert_close(out, torch.cat([a, b], 1), rtol=0, atol=0)
    grad = torch.randn_like(out)
    ga, gb = torch.autograd.grad(out, [a, b], grad)
    torch.testing.assert_close(ga, grad[:, :3], rtol=0, atol=0)
    torch.testing.assert_close(gb, grad[:, 3:], rtol=0, atol=0)
    assert ga.is_contiguous(memory_format=torch.channels_last) and gb.is_contiguous()
    with torch.no_grad():
        assert torch.equal(concat_channels(a, b), torch.cat([a, b], 1))


def test_matrix_product_paths_are_taken_only_for_small_maps(monkeypatch):
    conv = DenseFastConv2d(4, 4, 4, 2, 1, bias=False)
    assert conv._dense_window(torch.zeros(1, 4, 2, 2)) == (1, 1)  # one output pixel: a dense layer
    assert conv._dense_window(torch.zeros(1, 4, 4, 4)) is None
    assert conv._small_map(torch.zeros(1, 4, 4, 4)) == (2, 2)  # 2x2 output: unfold + one product
    assert conv._small_map(torch.zeros(1, 4, 8, 8)) is None  # 4x4 output: the library kernel
    calls = []
    monkeypatch.setattr(F, "linear", lambda *a, **k: calls.append("linear") or torch.zeros(1, 4))
    monkeypatch.setattr(F, "unfold", lambda *a, **k: calls.append("unfold") or torch.zeros(1, 64, 16))
    monkeypatch.setattr(F, "fold", lambda *a, **k: calls.append("fold") or torch.zeros(1, 4, 8, 8))
    conv(torch.zeros(1, 4, 8, 8))
    DenseFastConvTranspose2d(4, 4, 4, 2, 1, bias=False)(torch.zeros(1, 4, 4, 4))  # 4x4 input: the library's
    assert calls == []


def test_channels_last_weights_only_where_the_library_convolves(tmp_path):
    """On a CPU, channels_last gives channels-last weights to the layers oneDNN runs and keeps the
    matrix-product layers' weights in the default layout, without changing a value or the run's
    random stream."""
    splits = synthetic_splits(size=32, n_train=16)
    runs = {}
    for channels_last in (False, True):
        config = tiny_config(**{"data.image_size": 32, "train.channels_last": channels_last})
        trainer = _quiet(config, splits, tmp_path / str(channels_last))
        runs[channels_last] = (trainer, torch.get_rng_state())
    (default, rng_default), (mixed, rng_mixed) = runs[False], runs[True]
    assert torch.equal(rng_default, rng_mixed)
    layouts = {}
    for (name, a), b in zip(default.model.named_parameters(), mixed.model.parameters(), strict=True):
        assert torch.equal(a, b), name
        if b.dim() == 4 and b.shape[1] > 1 and b.shape[-1] > 1:
            layouts[name] = b.stride(1) == 1  # channels innermost
    assert layouts["generator.down.1.1.weight"] and layouts["generator.up.3.1.weight"]  # 16 -> 8, 8 -> 16
    assert not layouts["generator.down.3.1.weight"]  # 4x4 -> 2x2: unfold and a matrix product
    assert not layouts["generator.up.1.1.weight"]  # 2x2 -> 4x4: a matrix product and fold
    assert not layouts["discriminator.features.layers.8.weight"]  # 4x4 -> 1x1: a dense layer


@pytest.mark.parametrize("size", [16, 32, 64])
def test_whole_model_same_with_and_without_the_dense_path(size):
    torch.manual_seed(0)
    fast = SkipGANomaly(size, 3, ngf=4, ndf=4, nz=10).train()
    plain = set_dense_fast_path(copy.deepcopy(fast), False)
    x = torch.rand(6, 3, size, size) * 2 - 1
    results = []
    for model in (fast, plain):
        losses = model.training_losses(x, LossWeights())
        groups = model.parameter_groups()
        losses.generator.backward(inputs=groups["generator"], retain_graph=True)
        losses.discriminator.backward(inputs=groups["discriminator"])
        results.append((losses.parts, {n: p.grad for n, p in model.named_parameters()}))
    (parts_a, grads_a), (parts_b, grads_b) = results
    for key in parts_a:
        assert_close(parts_a[key], parts_b[key], rtol=1e-5, atol=1e-6, name=f"loss {key}")
    for name in grads_a:  # sums over batch and pixels in another order: tolerance against the scale
        assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, scale_atol=1e-5, name=name)


# --------------------------------------------------------------------------- the training step
def test_one_step_equals_the_official_three_pass_procedure(tmp_path):
    """Our step (D twice, both losses back-propagated before either network steps) computes the
    gradients the official order computes (G steps, then D runs again on the detached fake), and
    so gives the parameters it gives.

    The two run different kernels (dense fast path, channels_last, fused Adam against the library's
    convolutions and the default Adam), so gradients agree up to rounding, compared against each
    tensor's scale. The weights are then compared through Adam's first step, lr * g / (|g| + eps):
    where a gradient is near eps, its rounding moves a weight by a sizeable share of lr, so the
    weights must differ by exactly what the two gradients' steps differ by, and by nothing else."""
    splits = synthetic_splits()
    trainer = _quiet(tiny_config(), splits, tmp_path / "run")
    plain = PlainMode(trainer.model, torch.device("cpu"), 16, lr=trainer.config.train.lr)
    plain.weights = trainer.weights
    x = to_model_input(next(iterate_batches(splits.train, 16, image_size=16, channels=1)).images)
    ours = trainer.train_step(x)
    official_d = plain.train_step(x)
    assert ours["d"] == pytest.approx(official_d, rel=1e-5)
    official = dict(plain.model.named_parameters())
    lr, eps = trainer.config.train.lr, 1e-8  # Adam's default eps, in both optimisers

    def first_step(grad: torch.Tensor) -> torch.Tensor:
        g = grad.double()
        return lr * g / (g.abs() + eps)

    for name, param in trainer.model.named_parameters():
        grad, official_grad = param.grad, official[name].grad
        assert_close(grad, official_grad, rtol=1e-4, scale_atol=1e-5, name=f"gradient of {name}")
        moved_apart = param.detach().double() - official[name].detach().double()
        explained = first_step(official_grad) - first_step(grad)
        # A few float32 rounding units of the weights and of the step (each run rounds both).
        ulps = 8 * torch.finfo(torch.float32).eps * (float(param.detach().abs().max()) + lr)
        assert_close(moved_apart, explained, rtol=0, atol=ulps, name=f"weights {name}")


def test_fused_adam_makes_the_default_update():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(50, 7))
    b = torch.nn.Parameter(a.detach().clone())
    fused = device.adam([a], 2e-3, (0.5, 0.999), torch.device("cpu"))
    default = torch.optim.Adam([b], lr=2e-3, betas=(0.5, 0.999))
    assert fused.defaults.get("fused") in (True, None)  # None: this PyTorch has no fused CPU Adam
    for _ in range(5):
        grad = torch.randn(50, 7)
        a.grad, b.grad = grad.clone(), grad.clone()
        fused.step()
        default.step()
    assert_close(a, b, rtol=1e-5, atol=1e-7, name="fused against default Adam")


def test_channels_last_training_matches_the_default_layout(tmp_path):
    splits = synthetic_splits(n_train=64)
    runs = []
    for channels_last in (False, True):
        trainer = _quiet(
            tiny_config(**{"train.channels_last": channels_last}), splits, tmp_path / str(channels_last)
        )
        trainer.train_epoch(0, RunLog(None))
        runs.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
    for key in runs[0]:
        assert_close(runs[0][key].float(), runs[1][key].float(), rtol=1e-3, atol=1e-5, name=key)


def test_compiled_networks_train_like_eager_ones(tmp_path, monkeypatch):
    """train.compile wraps both networks; traced with the ``aot_eager`` backend (no C++ compiler
    needed) the two-backward step gives the eager weights."""
    original = torch.compile
    modes = []

    def traced(fn, *args, mode=None, **kwargs):
        modes.append(mode)
        return original(fn, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", traced)
    splits = synthetic_splits(n_train=32)
    eager = _quiet(tiny_config(**{"train.epochs": 1}), splits, tmp_path / "eager")
    compiled = _quiet(
        tiny_config(**{"train.epochs": 1, "train.compile": "reduce-overhead"}), splits, tmp_path / "compiled"
    )
    assert modes == ["reduce-overhead", "reduce-overhead"]
    log = RunLog(None)
    eager.train_epoch(0, log)
    compiled.train_epoch(0, log)
    a, b = eager.model.state_dict(), compiled.model.state_dict()
    assert a.keys() == b.keys()  # compiling in place keeps checkpoints loadable
    for key in a:
        assert_close(a[key].float(), b[key].float(), rtol=1e-4, atol=1e-6, name=key)


# --------------------------------------------------------------------------- runtime choices
def test_precision_auto_uses_bf16_only_where_it_is_native(monkeypatch):
    cpu = torch.device("cpu")
    assert precision.resolve_precision("fp32", cpu) is None
    assert precision.resolve_precision("bf16", cpu) is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve_precision("auto", cpu) is None
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve_precision("auto", cpu) is torch.bfloat16


def test_native_bf16_probe_agrees_with_the_cpu_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo")
    flags = set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    assert precision.cpu_has_native_bf16() == bool(flags & {"amx_bf16", "avx512_bf16"})


def test_thread_settings():
    before = torch.get_num_threads()
    try:
        assert threads.configure_threads(1) == 1
        assert threads.configure_threads(0, processes_per_machine=cores.available_cores() * 4) == 1
        assert 1 <= threads.configure_threads(0) <= cores.available_cores()  # auto: the free cores
    finally:
        torch.set_num_threads(before)


def test_new_options_are_validated():
    from skipganomaly.specs.errors import UserError

    with pytest.raises(UserError, match="train.compile"):
        tiny_config(**{"train.compile": "fast"})
    with pytest.raises(UserError, match="train.threads"):
        tiny_config(**{"train.threads": -1})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_bf16_channels_last_training(tmp_path):  # pragma: no cover - GPU only
    splits = synthetic_splits(n_train=64)
    config = tiny_config(
        **{"train.device": "cuda", "train.precision": "auto", "train.channels_last": True, "train.epochs": 1}
    )
    trainer = _quiet(config, splits, tmp_path / "gpu")
    assert trainer.amp_dtype is torch.bfloat16
    metrics = trainer.fit()
    assert np.isfinite(metrics["test"]["auroc"])
    assert splits.train._device_tensor.is_cuda  # preloaded once, sliced on the device


# --------------------------------------------------------------------------- streaming prediction
def test_file_batches_carry_the_original_sizes(image_folder):
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))
    image_set = ImageSet(class_ids=np.zeros(len(paths), np.int64), paths=paths)
    sizes = torch.cat([b.sizes for b in iterate_batches(image_set, 3, image_size=16, channels=1)])
    for path, (width, height) in zip(paths, sizes.tolist(), strict=True):
        with Image.open(path) as image:
            assert image.size == (width, height)


def test_streamed_prediction_with_workers_matches_in_process(tmp_path, image_folder):
    splits = synthetic_splits()
    trainer = _quiet(tiny_config(**{"train.epochs": 1}), splits, tmp_path / "run")
    trainer.fit()
    predictor = Predictor.from_run(tmp_path / "run", device="cpu")
    rows = []
    for workers in (0, 1):
        out = tmp_path / f"w{workers}.csv"
        heatmaps = tmp_path / f"maps{workers}"
        counts = predict_to_csv(predictor, [str(image_folder)], out, heatmaps, batch_size=3, workers=workers)
        assert counts["scored"] == 10
        with out.open() as handle:
            rows.append([(r["path"], r["score"]) for r in csv.DictReader(handle)])
        for row in csv.DictReader(out.open()):
            with Image.open(row["heatmap"]) as heat, Image.open(row["path"]) as source:
                assert heat.size == source.size
    assert rows[0] == rows[1]
    assert [p for p, _ in rows[0]] == sorted(p for p, _ in rows[0])


# --------------------------------------------------------------------------- the benchmark
def test_benchmark_measures_both_modes():
    settings = BenchmarkSettings(
        sizes=[16], batch_size=8, score_batch_size=16, steps=2, score_images=16, repeats=2, warmup=0,
        channels=1, ngf=4, ndf=4, nz=8, memory=False, device="cpu",
    )  # fmt: skip
    report = run_benchmark(settings, log=lambda s: None)
    [result] = report["results"]
    for task in ("train", "score"):
        for mode in ("plain", "optimised"):
            assert result[f"{task}_{mode}_img_s"] > 0
            assert len(result[f"{task}_{mode}_rounds_img_s"]) == 2
        assert result[f"{task}_ratio"] > 0
    assert report["machine"]["torch"] == torch.__version__
    assert report["machine"]["optimised_dtype"] in ("float32", "bfloat16")


def test_benchmark_peak_memory_comes_from_a_fresh_process():
    settings = BenchmarkSettings(
        sizes=[16], batch_size=4, score_batch_size=8, steps=1, score_images=8, channels=1, ngf=4, ndf=4, nz=8,
        device="cpu",
    )  # fmt: skip
    peak = _child_peak(settings, 16, "score", "optimised")
    assert peak is not None and 50 < peak < 4096  # MiB: PyTorch loaded, a tiny model scored


def test_benchmark_cli(tmp_path):
    args = ["--sizes", "16", "--ngf", "4", "--ndf", "4", "--steps", "1", "--repeats", "1", "--warmup", "0"]
    args += [
        "--score-images",
        "8",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--no-memory",
        "--json",
        str(tmp_path / "b.json"),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "skipganomaly", "benchmark", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "plain img/s" in result.stdout and "torch " in result.stdout
    rows = [row for row in map(str.split, result.stdout.splitlines()) if row[:1] == ["16"] and row[1] != "px"]
    assert [row[1] for row in rows] == ["train", "score"]
    assert all(float(v) > 0 for row in rows for v in row[2:5])  # plain, optimised, ratio
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["results"][0]["size"] == 16
    from skipganomaly.cli import main

    assert main(["benchmark", "--sizes", "33"]) == 2  # in process: a user error, before any work


def test_peak_memory_of_a_child_does_not_include_its_parent():
    """The benchmark measures each mode's peak in a fresh child; Linux carries ru_maxrss over exec,
    which made every child report at least the (large) parent's size."""
    ballast = np.ones(400 * 2**20, dtype=np.uint8)  # the parent holds 400 MiB more than the child
    code = "from skipganomaly.runtime.device import peak_rss_mib; print(peak_rss_mib())"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert device.peak_rss_mib() > float(child.stdout) + 300
    del ballast
