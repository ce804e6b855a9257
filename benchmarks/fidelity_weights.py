"""The fidelity check with the same weights in both codes (``benchmarks/fidelity.py``): the
official networks' tensors copied into ours, the official code's saved weights scored both ways
(``--cross-score``), and the first training steps of both compared loss by loss (``--steps``)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
from fidelity_runs import run_logged

from skipganomaly.specs.config import build_config

# The official model's first training steps on the first batches of its training set (in order,
# not shuffled), from its own initial weights, which are saved with the losses of each step.
OFFICIAL_STEPS_LAUNCHER = """
import sys
import torch
import torchvision.datasets.cifar as cifar
cifar.CIFAR10._check_integrity = lambda self: True
cifar.check_integrity = lambda *args, **kwargs: True
official, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, official)
sys.argv = ["train.py"] + sys.argv[4:]
from options import Options
from lib.data.dataloader import load_data
from lib.models import load_model
opt = Options().parse()
data = load_data(opt)
model = load_model(opt, data)
def weights():
    return {"g": {k: v.detach().clone() for k, v in model.netg.state_dict().items()},
            "d": {k: v.detach().clone() for k, v in model.netd.state_dict().items()}}
initial = weights()
dataset = data.train.dataset
losses = []
for step in range(steps):
    items = [dataset[i] for i in range(step * opt.batchsize, (step + 1) * opt.batchsize)]
    images = torch.stack([image for image, _ in items])
    labels = torch.tensor([int(label) for _, label in items])
    model.set_input((images, labels))
    model.optimize_params()
    losses.append(dict(model.get_errors()))
torch.save({"initial": initial, "final": weights(), "losses": losses}, out)
"""


# --------------------------------------------------------------------------- the same weights
def official_weights_into_ours(official_g: dict, official_d: dict, model) -> None:
    """Copy the official networks' tensors into our SkipGANomaly (the same architecture: both
    list their tensors in the same order, checked by shape; the decoder's concatenations put
    their two halves the other way round). The official classifier is a 3x3
    padded convolution on a 1x1 map: only its centre tap ever sees data, which is our 1x1 one."""
    import torch

    def tensors(state: dict) -> list[tuple[str, torch.Tensor]]:
        return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]

    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    theirs = tensors(official_g) + tensors(official_d)
    if len(theirs) != len(ours):
        raise SystemExit(
            f"the official networks hold {len(theirs)} tensors, ours {len(ours)}: not the same model"
        )
    mapped = {}
    for (their_key, value), (our_key, target) in zip(theirs, ours.items(), strict=True):
        if their_key.endswith("classifier.weight") and value.shape[-1] == 3:
            value = value[:, :, 1:2, 1:2]
        if re.fullmatch(r"generator\.up\.[1-9]\d*\.1\.weight", our_key):
            # The official blocks concatenate [skip, decoded], ours [decoded, skip]: the same
            # function with the input channels of each decoder convolution in the other order.
            skip, decoded = value.chunk(2, dim=0)
            value = torch.cat([decoded, skip], dim=0)
        if value.shape != target.shape:
            raise SystemExit(
                f"official {their_key} {tuple(value.shape)} does not fit our {our_key} {tuple(target.shape)}"
            )
        mapped[our_key] = value
    model.load_state_dict(mapped, strict=False)


def cross_score(
    args, batches: Path, name: str, official_dir: Path, official: dict, ours_dir: Path
) -> list[dict]:
    """Score the same weights both ways over the paper protocol's set, order and batches: with our
    ``paper`` protocol (L1 reconstruction term, as we train) and with the official formula
    (squared error). The official code's saved weights must give its own AUROC the second way;
    our last epoch's weights give our paper figure the first way, and the second way shows what
    the official formula would make of our training."""
    import torch

    from skipganomaly.data import prepare_data
    from skipganomaly.data.loading import iterate_batches, to_model_input
    from skipganomaly.formats.checkpoint import checkpoint_path, load_checkpoint
    from skipganomaly.models import SkipGANomaly
    from skipganomaly.scoring.engine import ScoringOptions, batchnorm_train_mode, score_set
    from skipganomaly.scoring.metrics import auroc

    values = {"data.dataset": "cifar10", "data.root": str(batches), "data.abnormal_class": name}
    splits = prepare_data(build_config(values).data)
    pool = splits.paper_evaluation_set()

    def both_ways(model) -> dict[str, float]:
        """AUROCs of the score with the squared-error R and with our L1 R (train-mode BatchNorm),
        and of its terms alone, with each term's mean over the normal images."""
        options = ScoringOptions(
            image_size=32,
            channels=3,
            batch_size=args.batch_size,
            device=torch.device("cpu"),
            batchnorm_train=True,
        )
        ours = score_set(model, pool, options)
        terms: dict[str, list[np.ndarray]] = {"r_squared": [], "r_l1": [], "latent": []}
        labels = []
        with batchnorm_train_mode(model), torch.inference_mode():
            for batch in iterate_batches(pool, args.batch_size, image_size=32, channels=3):
                x = to_model_input(batch.images)
                x_hat = model.generator(x)
                _, real = model.discriminator(x)
                _, fake = model.discriminator(x_hat)
                terms["r_squared"].append((x - x_hat).pow(2).flatten(1).mean(1).float().numpy())
                terms["r_l1"].append((x - x_hat).abs().flatten(1).mean(1).float().numpy())
                terms["latent"].append((real - fake).pow(2).flatten(1).mean(1).float().numpy())
                labels.append(batch.labels.numpy())
        y = np.concatenate(labels)
        t = {k: np.concatenate(v) for k, v in terms.items()}
        result = {
            "scored_squared": auroc(y, 0.9 * t["r_squared"] + 0.1 * t["latent"]),
            "scored_l1": auroc(ours.labels, ours.score),
        }
        for key, values in t.items():
            result[f"auroc_{key}"] = auroc(y, values)
            result[f"mean_normal_{key}"] = float(values[y == 0].mean())
        return result

    weights = official_dir / "output" / "skipganomaly" / "cifar10" / "train" / "weights"
    rows = []
    for epoch in range(1, args.epochs + 1):
        g_file, d_file = weights / f"netG_{epoch - 1}.pth", weights / f"netD_{epoch - 1}.pth"
        if not (g_file.is_file() and d_file.is_file()):
            continue  # the official code saves an epoch's weights only when its AUROC improved
        model = SkipGANomaly(32, 3, ngf=args.ngf, ndf=args.ndf, nz=args.nz)
        official_weights_into_ours(
            torch.load(g_file, weights_only=True)["state_dict"],
            torch.load(d_file, weights_only=True)["state_dict"],
            model,
        )
        rows.append(
            {"weights": "official", "epoch": epoch, "reported": official["paper_auroc"][epoch - 1]}
            | both_ways(model)
        )
    last = checkpoint_path(ours_dir, "last")
    if last.is_file():
        checkpoint = load_checkpoint(last)
        history = json.loads((ours_dir / "metrics.json").read_text())["history"]
        epoch = checkpoint.epoch
        rows.append(
            {"weights": "ours", "epoch": epoch, "reported": history[epoch - 1]["paper"]["auroc"]}
            | both_ways(checkpoint.build_model())
        )
    return rows


def compare_steps(args, batches: Path, name: str, run_dir: Path) -> dict:
    """The first ``args.steps`` training steps of both codes from the same initial weights (the
    official ones, copied into ours) on the same batches: their losses step by step, and how far
    the weights have drifted apart at the end, relative to how far training moved them."""
    import torch

    from skipganomaly.data import prepare_data
    from skipganomaly.data.loading import to_model_input
    from skipganomaly.models import SkipGANomaly
    from skipganomaly.training.trainer import Trainer

    run_dir.mkdir(parents=True, exist_ok=True)
    official_file = run_dir / f"official-{args.steps}-steps.pt"
    if not official_file.is_file() or args.fresh:
        data_link = run_dir / "data"
        if not data_link.exists():
            data_link.symlink_to(batches.parent.resolve(), target_is_directory=True)
        command = [args.official_python, "-c", OFFICIAL_STEPS_LAUNCHER, str(args.official.resolve())]
        command += [str(official_file), str(args.steps), "--dataset", "cifar10", "--abnormal_class", name]
        command += ["--batchsize", str(args.batch_size), "--ngf", str(args.ngf), "--ndf", str(args.ndf)]
        command += [
            "--nz",
            str(args.nz),
            "--manualseed",
            str(args.seed),
            "--device",
            "cpu",
            "--gpu_ids",
            "-1",
        ]
        command += ["--outf", str(run_dir / "output")]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        if run_logged(command, run_dir / "official-steps.log", cwd=run_dir, env=env) != 0:
            raise SystemExit(f"the official steps failed; see {run_dir / 'official-steps.log'}")
    saved = torch.load(official_file, weights_only=True)
    values = {
        "data.dataset": "cifar10",
        "data.root": str(batches),
        "data.abnormal_class": name,
        "data.batch_size": args.batch_size,
        "model.ngf": args.ngf,
        "model.ndf": args.ndf,
        "model.nz": args.nz,
        "train.preset": "reference",
        "train.device": "cpu",
        "train.threads": args.threads,
    }
    config = build_config(values)
    splits = prepare_data(config.data)
    official_final = SkipGANomaly(32, 3, ngf=args.ngf, ndf=args.ndf, nz=args.nz)
    official_weights_into_ours(saved["final"]["g"], saved["final"]["d"], official_final)
    official_initial = SkipGANomaly(32, 3, ngf=args.ngf, ndf=args.ndf, nz=args.nz)
    official_weights_into_ours(saved["initial"]["g"], saved["initial"]["d"], official_initial)

    def drift(model) -> dict[str, float]:
        """How far ``model`` lies from the official weights after the steps, relative to how far
        the official training moved them from where both started."""
        apart = {}
        for network in ("generator", "discriminator"):
            mine = dict(getattr(model, network).named_parameters())
            theirs = dict(getattr(official_final, network).named_parameters())
            start = dict(getattr(official_initial, network).named_parameters())
            distance = sum(float((mine[k].detach() - theirs[k].detach()).pow(2).sum()) for k in theirs)
            moved = sum(float((theirs[k].detach() - start[k].detach()).pow(2).sum()) for k in theirs)
            apart[network] = (distance / moved) ** 0.5
        return apart

    series, drifts = {}, {}
    for variant in ("ours", "ours_official_d_loss"):
        trainer = Trainer(config, splits, run_dir / "ours-steps", log=lambda line: None, progress=False)
        official_weights_into_ours(saved["initial"]["g"], saved["initial"]["d"], trainer.model)
        trainer.model.train()
        series[variant] = []
        for step in range(args.steps):
            images = splits.train.images[step * args.batch_size : (step + 1) * args.batch_size]
            x = to_model_input(torch.from_numpy(images).permute(0, 3, 1, 2))
            if variant == "ours":
                series[variant].append(trainer.train_step(x))
            else:
                series[variant].append(step_with_official_d_loss(trainer, x))
        drifts[variant] = drift(trainer.model)
    rows = []
    for step, theirs in enumerate(saved["losses"], start=1):
        row = {
            "step": step,
            "official": {
                "g_adv": theirs["err_g_adv"],
                "g_con": theirs["err_g_con"] / 50.0,  # its w_con (the default, 50) is in the logged term
                "g_lat": theirs["err_g_lat"],
                # the official D loss also holds the latent term: its adversarial part alone
                "d_adv": theirs["err_d"] - theirs["err_g_lat"],
            },
        }
        for variant, values in series.items():
            mine = values[step - 1]
            row[variant] = {
                "g_adv": mine["g_adv"],
                "g_con": mine["g_con"],
                "g_lat": mine["g_lat"],
                "d_adv": mine["d"],
            }
        rows.append(row)
    return {"steps": rows, "weights_apart_over_moved": drifts}


def step_with_official_d_loss(trainer, x) -> dict[str, float]:
    """Our training step with one change, to test where the two codes part: the discriminator's
    loss is the official one, Eq. 1 plus w_lat * L_lat (D also pulls f(x) and f(x_hat) together),
    where ours is Eq. 1 alone. Everything else is our step (``Trainer.train_step``)."""
    from skipganomaly.models.objective import (
        contextual_loss,
        discriminator_loss,
        generator_adversarial_loss,
        latent_loss,
    )

    model, weights = trainer.model, trainer.weights
    x_hat = model.generator(x)
    logit_real, features_real = model.discriminator(x)
    logit_fake, features_fake = model.discriminator(x_hat)
    adversarial = generator_adversarial_loss(logit_fake)
    contextual = contextual_loss(x, x_hat)
    latent = latent_loss(features_real, features_fake)
    generator = weights.adversarial * adversarial + weights.contextual * contextual + weights.latent * latent
    adversarial_d = discriminator_loss(logit_real, logit_fake)
    for opt in trainer.optimizers.values():
        opt.zero_grad(set_to_none=True)
    params = {
        name: [p for g in opt.param_groups for p in g["params"]] for name, opt in trainer.optimizers.items()
    }
    generator.backward(inputs=params["generator"], retain_graph=True)
    (adversarial_d + weights.latent * latent).backward(inputs=params["discriminator"])
    for opt in trainer.optimizers.values():
        opt.step()
    return {
        "g_adv": adversarial.item(),
        "g_con": contextual.item(),
        "g_lat": latent.item(),
        "d": adversarial_d.item(),
    }


def print_steps(args, batches: Path, work: Path, tag: str) -> int:
    shown = sorted({1, 2, 5, 10, 20, 50, 100, 200, 500, args.steps} & set(range(1, args.steps + 1)))
    results = {}
    for name in args.classes:
        compared = compare_steps(args, batches, name, work / "steps" / f"{name}-{tag}")
        results[name] = compared
        print(
            f"\n{name}: the first {args.steps} steps from the same initial weights on the same batches; "
            "each cell: official / ours / ours with the official D loss"
        )
        terms = ("g_adv", "g_con", "g_lat", "d_adv")
        print(f"{'step':>5} " + " ".join(f"{term:^26}" for term in terms))
        for row in compared["steps"]:
            if row["step"] in shown:
                cells = " ".join(
                    "/".join(f"{row[side][t]:.4f}" for side in ("official", "ours", "ours_official_d_loss"))
                    for t in terms
                )
                print(f"{row['step']:>5} {cells}")
        for variant, label in (("ours", "ours"), ("ours_official_d_loss", "ours with the official D loss")):
            drift = compared["weights_apart_over_moved"][variant]
            print(
                f"after {args.steps} steps, {label}: weights apart from the official ones by "
                f"{drift['generator']:.3f} (G) and {drift['discriminator']:.3f} (D) of the distance the official "
                "training moved them"
            )
    if args.json:
        args.json.write_text(
            json.dumps({"settings": vars(args), "steps": results}, indent=2, default=str) + "\n"
        )
        print(f"wrote {args.json}")
    return 0
