"""Data-parallel training on CPU with gloo and two processes: gradient synchronisation of both
networks, rank-0 checkpoints, exact resume, and the torchrun command line against one process."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from conftest import TINY_CLI, synthetic_splits, tiny_config
from numerics import assert_close, difference_report

from skipganomaly.data.loading import epoch_order, to_model_input
from skipganomaly.formats.checkpoint import checkpoint_path, load_checkpoint
from skipganomaly.runtime.distributed import context_from_env, shard_order, shutdown
from skipganomaly.training.trainer import Trainer

WORLD = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _join(rank: int, port: int):
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    return context_from_env("cpu")


def _spawn(fn, *args):
    mp.spawn(fn, args=(_free_port(), *args), nprocs=WORLD, join=True)


def test_shards_of_a_step_are_the_single_process_batch():
    order = epoch_order(103, seed=3, epoch=2)
    shards = [shard_order(order, 16, rank, 4) for rank in range(4)]
    assert all(len(s) == 96 // 4 for s in shards)  # 6 global batches of 16; the last 7 dropped
    for step in range(6):
        together = torch.cat([s[step * 4 : (step + 1) * 4] for s in shards])
        assert sorted(together.tolist()) == sorted(order[step * 16 : (step + 1) * 16].tolist())
    from skipganomaly.specs.errors import UserError

    with pytest.raises(UserError, match="multiple of 3"):
        shard_order(order, 16, 0, 3)


# --------------------------------------------------------------------------- one step
def _global_batch(splits):
    order = epoch_order(len(splits.train), 0, 0)[:16]
    return to_model_input(torch.from_numpy(splits.train.images[order.numpy()]).permute(0, 3, 1, 2))


def _step_worker(rank, port, out_dir):
    torch.set_num_threads(1)
    context = _join(rank, port)
    try:
        splits = synthetic_splits()
        trainer = Trainer(tiny_config(), splits, out_dir, log=lambda s: None, progress=False, context=context)
        x = _global_batch(splits)
        trainer.train_step(x[rank::WORLD])
        if rank == 0:  # the weights after the step, and the synchronised gradients that made it
            named = dict(trainer.model.named_parameters())
            torch.save(
                {
                    "params": {k: v.detach().clone() for k, v in named.items()},
                    "grads": {k: v.grad.detach().clone() for k, v in named.items()},
                },
                out_dir / "ddp.pt",
            )
        # Both ranks leave together: a rank that tears gloo down while the other still talks to
        # it can abort ("terminate called without an active exception", seen under heavy load).
        torch.distributed.barrier()
    finally:
        shutdown()


# Gradients summed by DDP's all-reduce in 1-thread processes against a sum in Python in this
# process (2 threads): the same terms in another order. Measured on an Intel Xeon (AVX-512, and
# with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2): at most 6.2e-7 of a tensor's largest
# gradient; the mean of the shards and one shard's own gradient differ by at least 6.5e-2 of it.
# 1e-4 of the scale leaves 160x for other CPUs and thread counts and stays 650x below the signal.
GRADIENT_TOLERANCE = {"rtol": 1e-4, "scale_atol": 1e-4}


def test_one_step_synchronises_both_networks(tmp_path):
    """After one DDP step every gradient of G and D is the mean of the per-shard gradients of a
    single process (each shard normalised by its own BatchNorm statistics, as DDP does without
    SyncBatchNorm, which PyTorch only has for GPUs), and the weights are Adam's step from them.

    The weights are compared after stepping the reference from the same (DDP) gradients, not from
    its own: Adam's first step is lr * g / (|g| + eps), which turns a rounding difference of a
    gradient near eps (1e-8) into a difference of a sizeable share of lr, so comparing weights
    stepped from two roundings of the gradients fails on some CPUs (1 of 32,768 elements off by
    4.7e-7 on a Zen 4) while nothing is wrong."""
    _spawn(_step_worker, tmp_path)
    ddp = torch.load(tmp_path / "ddp.pt")

    splits = synthetic_splits()
    reference = Trainer(tiny_config(), splits, tmp_path / "ref", log=lambda s: None, progress=False)
    model = reference.model
    groups = {name: list(params) for name, params in model.parameter_groups().items()}
    x = _global_batch(splits)
    grads = {}
    for rank in range(WORLD):
        model.zero_grad(set_to_none=True)
        losses = model.training_losses(x[rank::WORLD], reference.weights)
        losses.generator.backward(inputs=groups["generator"], retain_graph=True)
        losses.discriminator.backward(inputs=groups["discriminator"])
        for name, param in model.named_parameters():
            grads[name] = grads.get(name, 0) + param.grad / WORLD
    single_rank_grads = {n: p.grad.clone() for n, p in model.named_parameters()}  # rank 1's own
    for name in grads:
        assert_close(ddp["grads"][name], grads[name], **GRADIENT_TOLERANCE, name=f"gradient of {name}")
    # The shards' gradients differ, so the average really was taken: one shard's own gradient is
    # far outside the tolerance for nearly every tensor.
    apart = [
        difference_report(single_rank_grads[name], grads[name], **GRADIENT_TOLERANCE)["over"] > 0
        for name in grads
    ]
    assert sum(apart) > 0.9 * len(grads), f"{sum(apart)} of {len(grads)} tensors differ from one shard's"
    for name, param in model.named_parameters():
        param.grad = ddp["grads"][name].clone()
    for opt in reference.optimizers.values():
        opt.step()
    for name, param in model.named_parameters():
        # The same elementwise Adam update of the same numbers: equal up to a few units of
        # rounding (a vectorised body and a scalar tail may round differently).
        assert_close(ddp["params"][name], param, rtol=1e-6, atol=1e-9, name=f"weights {name}")


# --------------------------------------------------------------------------- training and resume
class Interrupt(Exception):
    pass


def _fit_worker(rank, port, root):
    """In one process group: an uninterrupted run, a run stopped after epoch 1, and its resumption."""
    torch.set_num_threads(1)
    context = _join(rank, port)
    try:
        config = tiny_config(**{"train.epochs": 2, "train.input_noise_std": 0.05})

        def trainer(run_dir):
            return Trainer(
                config, synthetic_splits(), run_dir, log=lambda s: None, progress=False, context=context
            )

        full = trainer(root / "full")
        metrics = full.fit()
        assert (metrics is not None) == (rank == 0)
        torch.save(full.model.state_dict(), root / f"full{rank}.pt")

        cut = trainer(root / "cut")

        def stop(t, epoch):
            if epoch == 1:
                raise Interrupt

        cut.callbacks.append(stop)
        with pytest.raises(Interrupt):
            cut.fit()
        assert not (root / "cut" / "metrics.json").exists()
        resumed = trainer(root / "cut")
        torch.manual_seed(12345 + rank)  # whatever the RNG holds now must not matter
        resumed.restore(load_checkpoint(checkpoint_path(root / "cut", "last")))
        assert resumed.start_epoch == 1
        resumed.fit()
        torch.save(resumed.model.state_dict(), root / f"resumed{rank}.pt")
    finally:
        shutdown()


def test_ddp_training_checkpoints_on_rank0_and_resumes_exactly(tmp_path):
    _spawn(_fit_worker, tmp_path)
    full = tmp_path / "full"
    rank0, rank1 = torch.load(tmp_path / "full0.pt"), torch.load(tmp_path / "full1.pt")
    for key in rank0:  # replicas agree (BatchNorm statistics are averaged before evaluation)
        # The same computation on every rank from the same all-reduced numbers: equal in practice;
        # the tolerance only allows for an all-reduce that rounds differently on each rank.
        assert_close(rank1[key].double(), rank0[key].double(), rtol=1e-6, atol=1e-7, name=f"rank 1's {key}")
    log = [json.loads(line) for line in (full / "log.jsonl").read_text().splitlines()]
    assert sum(r["event"] == "start" for r in log) == 1 and log[0]["processes"] == WORLD
    assert sum(r["event"] == "epoch" for r in log) == 2  # rank 0 alone writes
    payload = torch.load(checkpoint_path(full, "last"), weights_only=True)
    assert payload["rng"]["world_size"] == WORLD and len(payload["rng"]["ranks"]) == WORLD

    # Exact: the resumed run repeats the uninterrupted one's code path (same processes, same
    # threads, same batches), so any difference at all would be a resumption bug.
    for rank in range(WORLD):
        resumed = torch.load(tmp_path / f"resumed{rank}.pt")
        for key in rank0:
            assert torch.equal(rank0[key], resumed[key]), (rank, key)
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert a["test"]["auroc"] == b["test"]["auroc"]  # the same weights scored the same way
    assert a["test"]["auroc"] >= 0.9  # obvious anomalies are still found


# --------------------------------------------------------------------------- the command line
TRAIN = ["train", "--dataset", "digits", "--abnormal-class", "0", "--epochs", "2", "--seed", "0", *TINY_CLI]


def test_torchrun_matches_one_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}"]
    ddp = subprocess.run(
        [*launcher, "-m", "skipganomaly", *TRAIN, "--output", str(tmp_path / "ddp")],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert sum(line.startswith("epoch ") for line in ddp.stdout.splitlines()) == 2  # rank 0 alone prints
    assert f"on {WORLD} processes" in ddp.stdout
    one = subprocess.run(
        [sys.executable, "-m", "skipganomaly", *TRAIN, "--output", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    a = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    b = json.loads((tmp_path / "one" / "metrics.json").read_text())
    # Seed noise between runs of this tiny model is about 0.02 AUROC; per-process BatchNorm
    # statistics are the only difference here.
    assert abs(a["test"]["auroc"] - b["test"]["auroc"]) < 0.05
    assert a["counts"] == b["counts"] and a["epoch_best"] >= 1


def test_what_torchrun_refuses(tmp_path):
    """Checked before any collective call, so one process shows it."""
    from skipganomaly.runtime.distributed import DistributedContext
    from skipganomaly.specs.errors import UserError

    context = DistributedContext(rank=0, world_size=2, device=torch.device("cpu"))
    cases = [
        ({"model.name": "ganomaly"}, "does not support multi-process"),
        ({"train.sync_batchnorm": True}, "SyncBatchNorm has no CPU kernel"),
        ({"data.skip_bad_images": True}, "unequal batches"),
    ]
    for overrides, message in cases:
        with pytest.raises(UserError, match=message):
            Trainer(tiny_config(**overrides), synthetic_splits(), tmp_path, context=context)
