"""Model architectures, registered by name: ``list_models()`` and ``get_model(name, num_classes)``.

Adding an architecture is one new module here whose builders carry ``@register_model``, plus its
import below.
"""

from instaseg.models import maskrcnn  # noqa: F401  (registers the Mask R-CNN variants)
from instaseg.models.registry import MODELS, count_parameters, get_model, list_models, model_entry, register_model

DEFAULT_MODEL = "maskrcnn_resnet18_fpn"

__all__ = ["DEFAULT_MODEL", "MODELS", "count_parameters", "get_model", "list_models", "model_entry", "register_model"]
