"""The figures of a run's metrics as ``train`` and ``test`` print them."""

from __future__ import annotations

from pathlib import Path


def _selection_phrase(metrics: dict) -> str:
    """How the epoch was chosen, with the value it was chosen on (older metrics.json: the name)."""
    chosen = metrics.get("selected_on")
    val_auroc = metrics["val"]["auroc"]
    if not chosen:
        return f"selected by {metrics['selection']}; validation AUROC {val_auroc:.4f}"
    if chosen["metric"] == "val.auroc":
        return f"selected by validation AUROC {chosen['value']:.4f}"
    text = f"selected by the {chosen['title']}, {chosen['value']:.4f} ({chosen['better']} is better)"
    if val_auroc is None or val_auroc != val_auroc:  # NaN: validation holds no anomalies
        return text + "; validation holds no anomalies, so it has no AUROC"
    return text + f"; validation AUROC {val_auroc:.4f}"


def by_type_lines(split: dict, name: str = "test") -> list[str]:
    """The paper's Table II layout for one split: AUROC per anomaly type and overall."""
    by_type = split.get("by_type")
    if not by_type:
        return []
    width = max(len("overall"), *(len(k) for k in by_type))
    flagged = "threshold" in split
    lines = [
        f"{name} AUROC by anomaly type (normal vs that type; Table II layout):",
        f"  {'type':<{width}}  AUROC      n" + ("  flagged" if flagged else ""),
    ]
    for kind, entry in by_type.items():
        recall = f"  {entry['recall']:7.3f}" if flagged and "recall" in entry else ""
        lines.append(f"  {kind:<{width}}  {entry['auroc']:.3f}  {entry['n_abnormal']:5d}{recall}")
    overall = f"  {split['recall']:7.3f}" if flagged else ""
    lines.append(f"  {'overall':<{width}}  {split['auroc']:.3f}  {split['n_abnormal']:5d}{overall}")
    return lines


def shortcut_lines(metrics: dict) -> list[str]:
    """The trivial statistics' AUROC on the test split, and the warning block when one raises it."""
    from ..scoring.shortcuts import TITLES, warning_block

    section = metrics.get("shortcuts")
    if not section:
        return []
    lines = []
    test = section.get("test")
    if test and test["statistics"]:
        lines.append(
            f"test AUROC of trivial image statistics alone, beside the model's {metrics['test']['auroc']:.4f} "
            "(below 0.5: they separate the other way):"
        )
        width = max(len(TITLES.get(n, n)) for n in test["statistics"])
        for name, stat in test["statistics"].items():
            lines.append(
                f"  {TITLES.get(name, name):<{width}}  {stat['auroc']:.3f}  (separability "
                f"{stat['separability']:.3f}, {stat['direction']})"
            )
    margins = (metrics.get("margins") or {}).get("test")
    if margins:
        parts = []
        if "over_best_statistic" in margins:
            parts.append(
                f"{margins['over_best_statistic']:+.3f} over the best trivial statistic ({TITLES.get(margins['best_statistic'], margins['best_statistic'])})"
            )
        if "over_pixel_knn" in margins:
            parts.append(f"{margins['over_pixel_knn']:+.3f} over the pixel-kNN control")
        negative = any(v < 0 for k, v in margins.items() if k.startswith("over_"))
        lines.append(
            "model's test AUROC margin: "
            + "; ".join(parts)
            + ("  << NEGATIVE: a trivial detector does better" if negative else "")
        )
    warnings = section.get("warnings") or []
    if warnings:
        # The test split's lines in full (its figure is the one reported); validation's counted.
        shown = [w for w in warnings if w.startswith("test")] or warnings
        rest = len(warnings) - len(shown)
        if rest:
            shown.append(f"and {rest} on the validation split (metrics.json: shortcuts.warnings)")
        lines.append(warning_block(shown))
    return lines


def print_summary(metrics: dict, written: Path, seconds: float | None = None) -> None:
    """The figures of ``metrics`` and the file they were written to."""
    test = metrics["test"]
    print(
        f"test AUROC {test['auroc']:.4f} (protocol {metrics['protocol']}, epoch {metrics['epoch_best']} "
        f"{_selection_phrase(metrics)})"
    )
    fpr = f"; normal test images flagged {test['fpr']:.3f}" if "fpr" in test else ""
    if "fpr_target" in test:
        fpr += f" (the threshold, a quantile of validation normals, targets {test['fpr_target']:.3f})"
    print(
        f"test at the stored threshold {test['threshold']:.3f}: precision {test['precision']:.3f} "
        f"recall {test['recall']:.3f} F1 {test['f1']:.3f}{fpr}; AUPRC {test['auprc']:.4f}"
    )
    for line in by_type_lines(test):
        print(line)
    if "pixel_auroc" in test:
        aupro = f", AUPRO {test['aupro']:.4f}" if test.get("aupro") is not None else ""
        print(
            f"test pixel AUROC {test['pixel_auroc']:.4f}{aupro} over {test['pixel_images']} images with masks"
        )
        if "location_control" in test:
            note = (
                "" if test["pixel_margin"] > 0 else ": the map shows where defects usually are, not this one"
            )
            print(
                f"  location control (the validation normals' mean map, the same for every image) "
                f"{test['location_control']:.4f}; margin {test['pixel_margin']:+.4f}{note}"
            )
    steadiness = (metrics.get("steadiness") or {}).get("val_auroc")
    if steadiness and steadiness["epochs"] > 1:
        print(
            f"validation AUROC over the last {steadiness['epochs']} epochs: std {steadiness['std']:.4f}, "
            f"range {steadiness['range']:.4f}"
        )
    paper = metrics.get("paper_style")
    if paper and metrics["protocol"] != "paper":
        print(
            f"paper-style (optimistic, epoch chosen on test): test AUROC {paper['test_auroc']:.4f} at epoch {paper['epoch']}"
        )
    for line in shortcut_lines(metrics):
        print(line)
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    print(f"wrote {written}{took}")
