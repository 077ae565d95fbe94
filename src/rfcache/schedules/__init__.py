"""Profiles: the calibrated schedule artefact (YAML), and the profiles the project ships."""

from __future__ import annotations

from rfcache.schedules.profile import (
    RATIO_FORMS,
    SCHEMA_VERSION,
    Budget,
    Expert,
    InputItem,
    MethodSpec,
    ModelIdentity,
    Profile,
    ProfileError,
    Provenance,
    SamplingSetup,
    load_profile,
    ratio_position,
    to_plain,
)

__all__ = [
    "RATIO_FORMS",
    "SCHEMA_VERSION",
    "Budget",
    "Expert",
    "InputItem",
    "MethodSpec",
    "ModelIdentity",
    "Profile",
    "ProfileError",
    "Provenance",
    "SamplingSetup",
    "load_profile",
    "ratio_position",
    "to_plain",
]
