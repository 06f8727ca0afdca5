"""cluster.yaml is a valid `ray up` config (Ray's own schema and checks) and runs demem the way the
README says."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _prepared(cfg):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(cfg)
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_validation():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    prepared = _prepared(cfg)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    setup = " ".join(prepared["setup_commands"])
    assert "pip install" in setup and "/home/ubuntu/demem" in setup and "/mnt/demem" in setup
    assert prepared["file_mounts"]["/home/ubuntu/demem"] == "."


@pytest.mark.parametrize(
    "change, error",
    [
        ({"head_node_type": "nope"}, "head_node_type"),
        ({"unknown_key": 1}, "unknown_key"),
    ],
)
def test_the_check_rejects_a_broken_config(change, error):
    cfg = {**yaml.safe_load((ROOT / "cluster.yaml").read_text()), **change}
    with pytest.raises(Exception, match=error):
        _prepared(cfg)
