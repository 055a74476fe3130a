"""Model families: what differs between models, one folder per family (`detection`,
`classification`), each behind the `Family` interface of `rgtp.package.family`, re-exported
here for plug-in authors."""

from rgtp.package.family import (
    Family,
    FamilyConfig,
    GraphRunner,
    Prediction,
    StepResult,
    Task,
    config_from_dict,
    family_named,
    family_of,
)

__all__ = [
    "Family",
    "FamilyConfig",
    "GraphRunner",
    "Prediction",
    "StepResult",
    "Task",
    "config_from_dict",
    "family_named",
    "family_of",
]
