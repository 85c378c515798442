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
    assert types["cpu_ingest"]["resources"].get("GPU", 0) == 0 and types["cpu_ingest"]["resources"]["CPU"] > 0
    assert cluster["provider"]["type"] == "aws" and cluster["docker"]["image"]
    assert all("IamInstanceProfile" in t["node_config"] for t in types.values())  # S3 via instance role
