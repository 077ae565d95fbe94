"""Property-based: a mutated bundle manifest loads or fails with a one-line BundleError, nothing else.

Two kinds of mutation: plain edits (caught by the manifest's content hash) and edits whose hash is
recomputed, as a deliberate editor would, which reach every structural check behind it.
"""

import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rfcache.export import Bundle, BundleError, export
from rfcache.export.manifest import MANIFEST
from rfcache.export.manifest import content_hash as _content_hash
from tests.conftest import make_profile, make_tiny_digits_pipeline
from tests.schedules.test_profile_fuzz import _paths, apply_edits, weird_values


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    pipe = make_tiny_digits_pipeline()
    return export(pipe, make_profile(pipe, "CCPPCPC"), tmp_path_factory.mktemp("fuzz") / "bundle")


def mutate(manifest: dict, edits) -> dict:
    paths = [p for p in _paths(manifest) if p]
    return apply_edits(manifest, [(paths[i % len(paths)], action, value, "extra_key") for i, action, value in edits])


def check_outcome(folder) -> str:
    """Load ``folder``; returns 'valid' or 'refused', fails on anything else."""
    try:
        Bundle.load(folder)
    except BundleError as exc:
        message = str(exc)
        assert "\n" not in message and message
        return "refused"
    return "valid"


edits_strategy = st.lists(
    st.tuples(st.integers(0, 10_000), st.sampled_from(["set", "delete", "extra"]), weird_values), min_size=1, max_size=4
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(edits=edits_strategy, rehash=st.booleans(), truncate=st.integers(0, 2000))
def test_mutated_manifests_load_or_fail_cleanly(bundle_dir, tmp_path_factory, edits, rehash, truncate):
    folder = tmp_path_factory.mktemp("m") / "b"
    shutil.copytree(bundle_dir, folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    data = mutate(manifest, edits)
    if rehash:
        data["content_sha256"] = _content_hash(data)
    text = json.dumps(data, ensure_ascii=False)
    if truncate % 5 == 0:
        text = text[: truncate % max(len(text), 1)]
    (folder / MANIFEST).write_text(text, encoding="utf-8")
    check_outcome(folder)


def test_yaml_tags_in_the_bundled_profile_are_refused(bundle_dir, tmp_path):
    folder = shutil.copytree(bundle_dir, tmp_path / "b")
    profile = folder / "profile.yaml"
    profile.write_text("!!python/object/apply:os.system ['echo pwned > pwned.txt']\n")
    manifest = json.loads((folder / MANIFEST).read_text())
    from rfcache.export.bundle import sha256 as _sha256

    manifest["files"]["profile.yaml"] = _sha256(profile)
    manifest["content_sha256"] = _content_hash(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    assert check_outcome(folder) == "refused"
    assert not (tmp_path / "pwned.txt").exists()
