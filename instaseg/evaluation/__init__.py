"""The COCO metric: mask (and box) mAP identical to pycocotools, per-class tables and an error breakdown.

The numbers come from faster-coco-eval's C++ port of COCOeval, fed with COCO objects built in
memory from a ``Dataset`` and a results list (no temporary files, no second RLE encoding). Its
output equals pycocotools' ``COCOeval`` (the tests check all twelve stats to 1e-9, crowd regions
included) at a fraction of the time. Beyond the twelve numbers, an error breakdown at a score
threshold says why AP is lost, and a class-confusion matrix shows which classes are mistaken for which.

Modules, in the order the work happens:

- ``results``: reading predictions (``load_predictions``, ``match_images``) and checking each record.
- ``metric``: the COCO matching and accumulation (``evaluate``, ``evaluate_results``, ``EvalResult``).
- ``breakdown``: where AP is lost (``ErrorBreakdown``, ``ERROR_KINDS``) and the confusion matrix.
- ``report``: the files ``write_report`` leaves in a folder (metrics, curves, plots, tables).
"""

from instaseg.evaluation.breakdown import ERROR_KINDS, ErrorBreakdown
from instaseg.evaluation.metric import IOU_TYPES, STAT_NAMES, EvalResult, evaluate, evaluate_results
from instaseg.evaluation.report import write_report
from instaseg.evaluation.results import load_predictions, match_images

__all__ = [
    "ERROR_KINDS",
    "IOU_TYPES",
    "STAT_NAMES",
    "ErrorBreakdown",
    "EvalResult",
    "evaluate",
    "evaluate_results",
    "load_predictions",
    "match_images",
    "write_report",
]
