"""Networks: the registry (``create_model``, ``list_models``) and one file per model family.

Importing this package imports every family module below, and each registers its models on import; the
registry itself imports no family (timm's layout). A new family file is added to the imports here.
"""

from . import (  # noqa: F401  (each family registers its models on import)
    abmil,
    baselines,
    dncnn,
    ecg_mamba,
    ehr_baselines,
    ehr_mamba,
    lightm_unet,
    mair,
    mamba_mil,
    mambair,
    mambaout,
    medmamba,
    mini,
    segmamba,
    transmil,
    umamba,
    vim,
    vm_unet,
    vmamba,
)
from .registry import (
    MODEL_TASKS,
    ModelEntry,
    count_flops,
    count_parameters,
    create_model,
    get_entry,
    list_models,
    register_model,
)

__all__ = ["MODEL_TASKS", "ModelEntry", "count_flops", "count_parameters", "create_model", "get_entry",
           "list_models", "register_model"]
