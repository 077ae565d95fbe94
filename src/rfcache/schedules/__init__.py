"""Profiles: the calibrated schedule artefact (YAML), and the profiles the project ships."""

from __future__ import annotations

from rfcache.schedules.profile import (
    SCHEMA_VERSION,
    Budget,
    InputItem,
    MethodSpec,
    ModelIdentity,
    Profile,
    ProfileError,
    Provenance,
    SamplingSetup,
    load_profile,
)

__all__ = [
    "SCHEMA_VERSION",
    "Budget",
    "InputItem",
    "MethodSpec",
    "ModelIdentity",
    "Profile",
    "ProfileError",
    "Provenance",
    "SamplingSetup",
    "load_profile",
]
