"""Acceptance benchmark of the label review: inject known errors, review with out-of-fold models, score the ranking.

For each dataset (the synthetic shapes and, when ../shared is present, the DSB2018 nuclei subset):

1. inject 10% missing, 10% extra, 5% wrong-class (several classes only), 10% bad masks and 3%
   duplicates (``instaseg.review.inject_noise``, seed 0, or --noise-seed);
2. train K out-of-fold models (``--folds``, 2 by default) on the noisy labels (``--epochs-per-fold`` each, so that the result
   does not depend on how busy the machine is; or ``--minutes-per-fold``) and predict the
   images each one never saw;
3. rank suggestions with ``instaseg.review.review`` and, from the very same predictions (boxes and
   scores), cleanlab's object-detection label-quality scores;
4. report per error type the average precision of the ranking and precision/recall at k (k = the
   number of injected errors of that type), plus image-level AP for both tools.

Matching an injected error: same annotation id (for ``duplicate``: the same pair); for
``missing_label``, a suggested instance in the same image with mask IoU >= 0.5 (box IoU >= 0.5 for
cleanlab's box-level "overlooked" scores). Pre-existing (natural) label errors count as false
positives, so the numbers are a lower bound.

Run:  .venv/bin/python bench/bench_review.py --datasets synthetic --epochs-per-fold 30 --out /tmp/bench_review
      .venv/bin/python bench/bench_review.py --datasets dsb2018_nuclei --epochs-per-fold 60 --out /tmp/bench_review
"""

from __future__ import annotations

import argparse
import pickle
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from instaseg.core import masks as mask_ops
from instaseg.data import Dataset
from instaseg.data.synth import make_synthetic
from instaseg.engine.config import FLIPS, PHOTOMETRIC
from instaseg.review import inject_noise, review, review_document
from instaseg.review.noise import BAD_MASK_MAX_IOU
from instaseg.review.report import write_outputs
from instaseg.review.score import CONFIDENT_MATCH, ReviewSettings
from instaseg.review.sources import assign_folds, judge_held_out, out_of_fold_predictions

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
TYPES = ("missing_label", "extra_label", "wrong_class", "bad_mask", "duplicate")
RATES = {"missing": 0.10, "extra": 0.10, "wrong_class": 0.05, "bad_mask": 0.10, "duplicate": 0.03}


def average_precision(relevant: list[bool], total: int) -> float:
    """AP of a ranking (best first): mean precision at each hit, over all ``total`` true errors."""
    hits, ap = 0, 0.0
    for rank, hit in enumerate(relevant, start=1):
        if hit:
            hits += 1
            ap += hits / rank
    return ap / total if total else float("nan")


def at_k(relevant: list[bool], total: int) -> tuple[float, float]:
    """Precision and recall within the first k = ``total`` entries of a ranking."""
    found = sum(relevant[:total])
    return (found / total, found / total) if total else (float("nan"), float("nan"))


def _box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _xyxy(bbox) -> list[float]:
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def score_ours(noisy: Dataset, suggestions: list, injected: list[dict]) -> dict[str, dict]:
    """Per type: AP, P@k, R@k of our ranking against the injected errors."""
    rows = {}
    for kind in TYPES:
        truth = [e for e in injected if e["type"] == kind]
        ranked = [s for s in suggestions if s.type == kind]
        relevant = []
        if kind == "missing_label":
            unclaimed = list(truth)
            for s in ranked:
                hit = None
                for error in unclaimed:
                    if error["image_id"] != s.image_id:
                        continue
                    image = noisy.image_by_id[s.image_id]
                    dropped = mask_ops.to_rle(error["annotation"]["segmentation"], image["height"], image["width"])
                    if mask_ops.iou([s.suggested_segmentation], [dropped])[0, 0] >= 0.5:
                        hit = error
                        break
                if hit is not None:
                    unclaimed.remove(hit)
                relevant.append(hit is not None)
        elif kind == "duplicate":
            pairs = {frozenset((e["annotation_id"], e["source_annotation_id"])) for e in truth}
            seen = set()
            for s in ranked:
                pair = frozenset((s.annotation_id, s.other_annotation_id))
                relevant.append(pair in pairs and pair not in seen)
                seen.add(pair)
        else:
            ids = {e["annotation_id"] for e in truth}
            relevant = [s.annotation_id in ids for s in ranked]
        rows[kind] = _summary(relevant, len(truth))
        if kind == "bad_mask":  # which distortions the top k finds
            top = {s.annotation_id for s in ranked[: len(truth)]}
            rows[kind]["r_at_k_by_distortion"] = {
                how: float(np.mean([e["annotation_id"] in top for e in truth if e["distortion"] == how]))
                for how in sorted({e["distortion"] for e in truth})
            }
    return rows


def _summary(relevant: list[bool], total: int) -> dict:
    precision, recall = at_k(relevant, total)
    return {
        "n": total,
        "ap": average_precision(relevant, total),
        "p_at_k": precision,
        "r_at_k": recall,
        "suggested": len(relevant),
    }


def cleanlab_inputs(noisy: Dataset, predictions: dict) -> tuple[list[dict], list[np.ndarray], list[list[int]]]:
    """Labels and predictions in cleanlab's object-detection format (boxes only), and each label's annotation id."""
    labels, preds, ann_ids = [], [], []
    k = len(noisy.class_names)
    for image in noisy.images:
        anns = [a for a in noisy.annotations_by_image.get(image["id"], []) if not a.get("iscrowd", 0)]
        boxes = []
        for a in anns:
            image_size = (image["height"], image["width"])
            boxes.append(_xyxy(mask_ops.bbox(mask_ops.to_rle(a["segmentation"], *image_size))))
        labels.append(
            {
                "bboxes": np.asarray(boxes, np.float32).reshape(-1, 4),
                "labels": np.asarray([noisy.category_index[a["category_id"]] for a in anns], np.int64),
            }
        )
        ann_ids.append([a["id"] for a in anns])
        inst = predictions.get(image["id"])
        per_class = np.empty(k, dtype=object)
        for c in range(k):
            if inst is None or not len(inst):
                per_class[c] = np.zeros((0, 5), np.float32)
                continue
            chosen = inst.class_ids == c
            per_class[c] = np.concatenate([inst.boxes[chosen], inst.scores[chosen, None]], 1).astype(np.float32)
        preds.append(per_class)
    return labels, preds, ann_ids


def score_cleanlab(noisy: Dataset, predictions: dict, injected: list[dict]) -> tuple[dict[str, dict], list[float]]:
    """Per type, the ranking by cleanlab's matching box-level score; and its per-image quality scores."""
    from cleanlab.object_detection import rank

    labels, preds, ann_ids = cleanlab_inputs(noisy, predictions)
    overlooked = rank.compute_overlooked_box_scores(labels=labels, predictions=preds)
    swap = rank.compute_swap_box_scores(labels=labels, predictions=preds)
    badloc = rank.compute_badloc_box_scores(labels=labels, predictions=preds)
    image_quality = rank.get_label_quality_scores(labels, preds, verbose=False)

    def label_ranking(scores_per_image) -> list[tuple[float, int]]:
        ranked = []
        for ids, scores in zip(ann_ids, scores_per_image):
            for ann_id, value in zip(ids, scores):
                ranked.append((1.0 if np.isnan(value) else float(value), ann_id))
        return sorted(ranked)  # lowest quality first

    rows = {}
    for kind, scores in (
        ("extra_label", [np.fmin(s, b) for s, b in zip(swap, badloc)]),
        ("wrong_class", swap),
        ("bad_mask", badloc),
    ):
        ids = {e["annotation_id"] for e in injected if e["type"] == kind}
        rows[kind] = _summary([ann_id in ids for _, ann_id in label_ranking(scores)], len(ids))
    dup_ranked = label_ranking([np.fmin(s, b) for s, b in zip(swap, badloc)])
    relevant, seen = [], set()
    pair_of = {}
    for e in injected:
        if e["type"] == "duplicate":
            pair = frozenset((e["annotation_id"], e["source_annotation_id"]))
            pair_of[e["annotation_id"]] = pair_of[e["source_annotation_id"]] = pair
    for _, ann_id in dup_ranked:
        pair = pair_of.get(ann_id)
        relevant.append(pair is not None and pair not in seen)
        if pair is not None:
            seen.add(pair)
    rows["duplicate"] = _summary(relevant, len(set(pair_of.values())))

    # overlooked: one score per predicted box; a hit is a box over a dropped label (box IoU >= 0.5)
    missing = [e for e in injected if e["type"] == "missing_label"]
    ranked = []
    for image, scores, per_class in zip(noisy.images, overlooked, preds):
        boxes = np.concatenate([p for p in per_class], 0) if len(per_class) else np.zeros((0, 5))
        for box, value in zip(boxes, scores):
            if not np.isnan(value):
                ranked.append((float(value), image["id"], box[:4].tolist()))
    ranked.sort(key=lambda r: r[0])
    unclaimed = list(missing)
    relevant = []
    for _, image_id, box in ranked:
        hit = next(
            (
                e
                for e in unclaimed
                if e["image_id"] == image_id and _box_iou(box, _xyxy(e["annotation"]["bbox"])) >= 0.5
            ),
            None,
        )
        if hit is not None:
            unclaimed.remove(hit)
        relevant.append(hit is not None)
    rows["missing_label"] = _summary(relevant, len(missing))
    return rows, [float(q) for q in image_quality]


def image_level(noisy: Dataset, injected: list[dict], image_scores: list[float]) -> float:
    """AP of ranking images by ``image_scores`` (higher = more suspect) for 'has an injected error'."""
    dirty = {e["image_id"] for e in injected}
    order = np.argsort(-np.asarray(image_scores), kind="stable")
    return average_precision([noisy.images[i]["id"] in dirty for i in order], len(dirty))


def run_dataset(name: str, clean: Dataset, work: Path, args, preset: str, model_kwargs: dict | None = None) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    rates = dict(RATES)
    if len(clean.categories) < 2:
        rates["wrong_class"] = 0.0
    noisy, injected = inject_noise(clean, **rates, seed=args.noise_seed)
    noisy.save(work / "noisy.json", overwrite=True, record_image_root=True)
    noisy = Dataset.load(work / "noisy.json")
    started = time.perf_counter()
    judged = work / f"judged-seed{args.noise_seed}.pkl"  # the fold models' verdicts, for --reuse-folds
    reused_verdicts = args.reuse_folds and judged.exists()
    if reused_verdicts:
        predictions, label_probs = pickle.loads(judged.read_bytes())
    else:
        if args.reuse_folds:
            predictions, label_probs = judge_with_fold_checkpoints(noisy, work / "folds", args.folds)
        else:
            for stale in work.glob("judged-seed*.pkl"):  # verdicts of the fold models this run replaces
                stale.unlink()
            predictions, label_probs, _ = out_of_fold_predictions(
                noisy,
                args.folds,
                out=work / "folds",
                minutes_per_fold=args.minutes_per_fold,
                epochs_per_fold=args.epochs_per_fold,
                seed=0,
                train_options={
                    "overwrite": True,
                    "progress": False,
                    "preset": preset,
                    "model_kwargs": model_kwargs,
                    "crop_size": args.crop_size,
                    "flips": args.flips,
                    "photometric": args.photometric,
                    "processes": args.processes,
                },
            )
        judged.write_bytes(pickle.dumps((predictions, label_probs)))
    trained = time.perf_counter() - started
    started = time.perf_counter()
    suggestions, info = review(noisy, predictions, ReviewSettings(min_score=0.0), label_probs, noisy.read_image)
    reviewed = time.perf_counter() - started
    document = review_document(
        noisy,
        suggestions,
        source={"kind": "folds", "folds": args.folds},
        warnings=info["warnings"],
        settings=ReviewSettings(min_score=0.0),
        extra={"bad_mask_reference": info["bad_mask_reference"]},
    )
    report = work / "report"
    if report.exists():
        shutil.rmtree(report)
    report.mkdir()
    write_outputs(report, document, noisy, max_pictures=60)

    from instaseg.evaluation import evaluate

    mask_ap = float(evaluate(clean, predictions).stats["segm"][0])  # of the fold models, against the clean labels
    result = {
        "name": name,
        "images": len(noisy.images),
        "labels": len(noisy.annotations),
        "injected": len(injected),
        "mask_ap": mask_ap,
        "train_s": trained,
        "reused_verdicts": reused_verdicts,
        "review_s": reviewed,
        "reference": info["bad_mask_reference"],
        "outlines": outline_agreement(clean, predictions, injected),
        **compare(noisy, suggestions, predictions, injected),
    }
    # What the model's verdicts on the labels' and predictions' own boxes add: the same predictions
    # scored as a predictions file would give them (no label probabilities, no second look at the boxes).
    as_from_a_file = {
        image_id: replace(found, data={k: v for k, v in found.data.items() if k != "box_score"})
        for image_id, found in predictions.items()
    }
    result["predictions_only"] = score_ours(
        noisy, review(noisy, as_from_a_file, ReviewSettings(min_score=0.0), read_image=noisy.read_image)[0], injected
    )
    # What checking the outlines against the image's edges adds to bad masks: the same review without the images.
    without_edges = review(noisy, predictions, ReviewSettings(min_score=0.0), label_probs)[0]
    result["without_edges"] = score_ours(noisy, without_edges, injected)["bad_mask"]["ap"]
    # What the image's own look adds (instaseg.review.appearance): the same review without that witness.
    without_look = review(
        noisy, predictions, ReviewSettings(min_score=0.0, appearance_weight=0.0), label_probs, noisy.read_image
    )[0]
    result["without_look"] = score_ours(noisy, without_look, injected)
    # What each image's own bad-mask reference adds: the same review with the dataset's reference alone.
    dataset_reference = review(
        noisy, predictions, ReviewSettings(min_score=0.0, min_image_matches=10**9), label_probs, noisy.read_image
    )[0]
    result["dataset_reference"] = score_ours(noisy, dataset_reference, injected)["bad_mask"]["ap"]
    # The ceiling of the scoring rules, apart from model quality: the clean labels as predictions.
    oracle = {}
    for image in clean.images:
        truth = clean.ground_truth(image)
        truth.scores[:] = 0.99  # above cleanlab's default high-probability threshold (0.95)
        oracle[image["id"]] = truth
    result["oracle"] = compare(
        noisy, review(noisy, oracle, ReviewSettings(min_score=0.0), read_image=noisy.read_image)[0], oracle, injected
    )
    return result


def judge_with_fold_checkpoints(noisy: Dataset, folder: Path, folds: int) -> tuple[dict, dict]:
    """What ``out_of_fold_predictions`` returns, from the fold checkpoints an earlier run left in ``folder``."""
    checkpoints = [folder / f"fold-{fold + 1}" / "best.pt" for fold in range(folds)]
    for checkpoint in checkpoints:
        if not checkpoint.exists():
            sys.exit(f"--reuse-folds: {checkpoint} is missing; run once without --reuse-folds")
    return judge_held_out(noisy, assign_folds(noisy, folds, seed=0), checkpoints)


def outline_agreement(clean: Dataset, predictions: dict, injected: list[dict]) -> dict:
    """How far the fold models' outlines are from correct labels, against how far the injected bad masks are.

    A bad mask can only stand out when the model draws correct labels closer to themselves than the
    distortion moves a bad one (``BAD_MASK_MAX_IOU``): for each clean label, the best mask IoU of
    a confident detection (``CONFIDENT_MATCH``, as the review's bad-mask reference), over the labels
    it finds (IoU above ``missing_max_iou``, where the review counts a detection as the same object).
    """
    best = []
    for image in clean.images:
        truth = clean.ground_truth(image)
        found = predictions.get(image["id"])
        confident = found[found.scores >= CONFIDENT_MATCH] if found is not None else []
        if len(truth) and len(confident):
            best += list(mask_ops.iou(truth.rles(), confident.rles()).max(1))
        else:
            best += [0.0] * len(truth)
    best = np.asarray(best)
    detected = best[best > ReviewSettings.missing_max_iou]
    distorted = [e["iou"] for e in injected if e["type"] == "bad_mask"]
    return {
        "found": float(len(detected) / max(len(best), 1)),
        "median_iou": float(np.median(detected)) if len(detected) else float("nan"),
        "below_threshold": float(np.mean(detected < BAD_MASK_MAX_IOU)) if len(detected) else float("nan"),
        "bad_mask_median_iou": float(np.median(distorted)) if distorted else float("nan"),
    }


def compare(noisy: Dataset, suggestions: list, predictions: dict, injected: list[dict]) -> dict:
    """Both tools' per-type and image-level scores for one set of predictions."""
    ours = score_ours(noisy, suggestions, injected)
    theirs, quality = score_cleanlab(noisy, predictions, injected)
    worst = {}
    for s in suggestions:
        worst[s.image_id] = max(worst.get(s.image_id, 0.0), s.score)
    our_image_ap = image_level(noisy, injected, [worst.get(img["id"], 0.0) for img in noisy.images])
    their_image_ap = image_level(noisy, injected, [1.0 - q for q in quality])
    return {"ours": ours, "cleanlab": theirs, "image_ap": (our_image_ap, their_image_ap)}


def budget(args) -> str:
    """The fold models' training budget, in words."""
    return f"{args.epochs_per_fold} epochs" if args.epochs_per_fold else f"{args.minutes_per_fold:g} minutes"


def markdown(results: list[dict], args, command: str) -> str:
    lines = [
        "## Label review (`instaseg review`): finding injected label errors",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, CPU only. "
        f"Out-of-fold models: K = {args.folds} folds, {budget(args)} of training per fold "
        f"(default architecture of `instaseg.engine.train.train`, preset 'small' for the synthetic shapes, 'cpu' for the nuclei), trained on the noisy labels.",
        "",
        f"Injected (seed {args.noise_seed}): 10% missing, 10% extra, 5% wrong class (multi-class data only), 10% bad masks, "
        "3% duplicates. AP = average precision of each type's ranking; P@k / R@k = precision / recall "
        "in the top k, k = number injected. cleanlab 2.x (`cleanlab.object_detection.rank`) scores the "
        "same predictions' boxes: overlooked -> missing, swap -> wrong class, badloc -> bad mask, "
        "min(swap, badloc) -> extra and duplicate (it has no dedicated type for those two). "
        "Targets: AP >= 0.8 (missing, extra, wrong class, duplicate), >= 0.6 (bad mask).",
        "",
    ]
    for r in results:
        lines += [
            f"### {r['name']}: {r['images']} images, {r['labels']} labels after injection, {r['injected']} injected errors",
            "",
            (
                f"Fold models from an earlier run of {budget(args)} per fold (`--reuse-folds`); "
                + (
                    "their verdicts read back from that run"
                    if r["reused_verdicts"]
                    else f"judging {r['train_s'] / 60:.1f} min"
                )
                if args.reuse_folds
                else f"Training {r['train_s'] / 60:.1f} min for both folds (judging included)"
            )
            + f"; scoring {r['review_s']:.1f} s. "
            f"Out-of-fold mask mAP@[.5:.95] against the clean labels: {r['mask_ap']:.3f}. "
            f"Bad-mask reference: median boundary IoU {r['reference']['median_boundary_iou']}, "
            f"spread {r['reference']['boundary_iou_spread']}; median edge alignment {r['reference'].get('median_edge_alignment')}, "
            f"spread {r['reference'].get('edge_alignment_spread')}.",
            "",
        ]
        lines += _table(r, "out-of-fold models")
        alone = r["predictions_only"]
        lines += [
            "Without the model's verdicts on the labels' and predictions' own boxes (`classify_boxes`; what `--pred` gets), "
            "the same predictions give AP "
            + ", ".join(f"{kind} {alone[kind]['ap']:.3f}" for kind in TYPES if alone[kind]["n"])
            + ".",
            "",
            "Bad masks in the top k, by distortion: "
            + ", ".join(f"{how} {found:.2f}" for how, found in r["ours"]["bad_mask"]["r_at_k_by_distortion"].items())
            + ".",
            "",
            f"Without the images (neither edges nor look), bad-mask AP {r['without_edges']:.3f}.",
            "",
            "Without the image's look (`appearance_weight=0`), AP "
            + ", ".join(f"{kind} {r['without_look'][kind]['ap']:.3f}" for kind in TYPES if r["without_look"][kind]["n"])
            + ".",
            "",
            f"With the dataset's bad-mask reference alone (no image's own), bad-mask AP {r['dataset_reference']:.3f}.",
            "",
            outline_sentence(r["outlines"]),
            "",
        ]
        lines += [
            "",
            "Ceiling of the scoring rules, apart from model quality (the clean labels given as predictions, "
            "confidence 0.99, no class probabilities):",
            "",
        ]
        lines += _table(r["oracle"], "perfect predictions")
    return "\n".join(lines) + "\n"


def outline_sentence(outlines: dict) -> str:
    """``outline_agreement`` in words."""
    return (
        f"The fold models' outlines against the clean labels: {outlines['found']:.0%} of the labels have a confident "
        f"detection (score >= {CONFIDENT_MATCH}, mask IoU > {ReviewSettings.missing_max_iou}), at median mask IoU {outlines['median_iou']:.3f}, and "
        f"{outlines['below_threshold']:.0%} of those are below {BAD_MASK_MAX_IOU}, the IoU under which every injected "
        f"bad mask lies (their median: {outlines['bad_mask_median_iou']:.3f})."
    )


def _table(r: dict, what: str) -> list[str]:
    lines = [
        f"| error type ({what}) | injected | instaseg AP | P@k | R@k | cleanlab AP | P@k | R@k | target met |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for kind in TYPES:
        o, c = r["ours"][kind], r["cleanlab"][kind]
        if not o["n"]:
            lines.append(f"| {kind} | 0 | - | - | - | - | - | - | n/a |")
            continue
        target = 0.6 if kind == "bad_mask" else 0.8
        lines.append(
            f"| {kind} | {o['n']} | {o['ap']:.3f} | {o['p_at_k']:.2f} | {o['r_at_k']:.2f} | "
            f"{c['ap']:.3f} | {c['p_at_k']:.2f} | {c['r_at_k']:.2f} | {'yes' if o['ap'] >= target else '**no**'} |"
        )
    lines += [
        "",
        f"Image level (does the image hold an injected error?), AP: instaseg {r['image_ap'][0]:.2f}, "
        f"cleanlab `get_label_quality_scores` {r['image_ap'][1]:.2f}.",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    budgets = parser.add_mutually_exclusive_group()
    budgets.add_argument("--epochs-per-fold", type=int, default=None)
    budgets.add_argument("--minutes-per-fold", type=float, default=None)
    parser.add_argument("--synthetic-images", type=int, default=600)
    parser.add_argument("--folds", type=int, default=2, help="out-of-fold models (each trains on all folds but one)")
    parser.add_argument(
        "--noise-seed",
        type=int,
        default=0,
        help="seed of the injected errors; with --reuse-folds, another seed judges a second set of "
        "errors with the same fold models, which never saw the images they judge",
    )
    parser.add_argument("--crop-size", type=int, default=None, help="fold models train on crops of this size")
    parser.add_argument(
        "--flips",
        choices=FLIPS,
        default="horizontal",
        help="random flips of the fold models' training images (all: also upside down and quarter turns)",
    )
    parser.add_argument(
        "--photometric",
        choices=PHOTOMETRIC,
        default="jitter",
        help="random colour changes of the fold models' training images (all: also grey and inverted)",
    )
    parser.add_argument("--processes", type=int, default=1, help="training processes per fold model (CPU)")
    parser.add_argument(
        "--reuse-folds",
        action="store_true",
        help="judge with the fold checkpoints an earlier run with the same --out left, instead of training "
        "(and reuse that run's verdicts for this --noise-seed when it saved them)",
    )
    parser.add_argument("--datasets", default="synthetic,dsb2018_nuclei")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_review"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "out" / "review.md")
    args = parser.parse_args()
    if args.epochs_per_fold is None and args.minutes_per_fold is None:
        args.epochs_per_fold = 30
    command = " ".join([".venv/bin/python", "bench/bench_review.py", *sys.argv[1:]])
    results = []
    wanted = args.datasets.split(",")
    if "synthetic" in wanted:
        train, _ = make_synthetic(
            args.out / "synthetic-data", num_train=args.synthetic_images, num_val=1, size=128, seed=0, overwrite=True
        )
        results.append(
            run_dataset(
                "synthetic shapes (4 classes, 128 px)",
                Dataset.load(train),
                args.out / "synthetic",
                args,
                preset="small",
            )
        )
        print(markdown(results, args, command))
    if "dsb2018_nuclei" in wanted and (SHARED / "dsb2018_nuclei").exists():
        from instaseg.data.convert import open_dataset

        clean = open_dataset(SHARED / "dsb2018_nuclei", "mask-files")
        # The preset bench_train.py measured on these images (0.209 mask mAP in 15 minutes).
        results.append(
            run_dataset("DSB2018 nuclei subset (1 class)", clean, args.out / "dsb2018_nuclei", args, preset="cpu")
        )
    text = markdown(results, args, command)
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)


if __name__ == "__main__":
    main()
