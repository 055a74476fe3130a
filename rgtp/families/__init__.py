"""Model families: what differs between models, one folder per family (`detection`,
`classification`), each behind the `Family` interface of `rgtp.package.family`, re-exported
here for plug-in authors with the registry (`register_family`, `family_named`) and the named
configurations of every family (`get_config`, `model_names`), and what the command line asks
of a family (`tool`, `weight_formats`, `flops_conventions`)."""

from rgtp.package.family import (
    ENTRY_POINT_GROUP,
    Family,
    FamilyConfig,
    GraphRunner,
    Prediction,
    StepResult,
    Task,
    config_from_dict,
    families,
    family_named,
    family_of,
    flops_conventions,
    get_config,
    model_names,
    register_family,
    shipped_weights,
    tool,
    weight_formats,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Family",
    "FamilyConfig",
    "GraphRunner",
    "Prediction",
    "StepResult",
    "Task",
    "config_from_dict",
    "families",
    "family_named",
    "family_of",
    "flops_conventions",
    "get_config",
    "model_names",
    "register_family",
    "shipped_weights",
    "tool",
    "weight_formats",
]
