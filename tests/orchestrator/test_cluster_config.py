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


def test_every_spec_the_header_runs_exists_and_validates():
    """The commands in cluster.yaml's header name specs that exist and validate (without the data,
    which live on the cluster)."""
    import re

    from orchestrator.spec import load_spec

    header = "".join(line for line in (ROOT / "cluster.yaml").read_text().splitlines(True) if line.startswith("#"))
    specs = set(re.findall(r"search_spaces/[\w.-]+\.yaml", header))
    assert specs, "the header runs no spec"
    for spec in specs:
        plan = load_spec(ROOT / spec, check_data=False).plan()
        assert "cost:" in plan and "GPU" in plan


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "svhn"])
def test_paper_specs_are_the_reference_setting(dataset):
    from orchestrator.spec import load_spec

    spec = load_spec(ROOT / "search_spaces" / f"paper_{dataset}.yaml", check_data=False)
    runs = {g.label: g.run for g in spec.groups()}
    base = runs["method=pgd_at"]
    assert base["attack"]["eps"] == pytest.approx(8 / 255) and base["attack"]["steps"] == 3
    assert base["attack"]["step_size"] == pytest.approx(1.25 * 8 / 255 / 3)
    assert base["eval"]["attack"]["steps"] == 20 and base["eval"]["attack"]["step_size"] == pytest.approx(1 / 255)
    t = base["train"]
    assert (t["lr"], t["momentum"], t["weight_decay"], t["batch_size"], t["augment"]) == (0.1, 0.9, 5e-4, 256, True)
    assert t["arch"] == ("small-cnn" if dataset == "svhn" else "resnet18")
    assert t["epochs"] == {"cifar10": 100, "cifar100": 130, "svhn": 50}[dataset]
    assert round(t["epochs"] * t["lr_milestones"][0]) == {"cifar10": 75, "cifar100": 75, "svhn": 38}[dataset]
    assert {runs[k]["demem"]["lambda"] for k in runs if k.startswith("method=pgd_at lambda")} == {0.2, 0.4, 0.6}
    assert {runs[k]["demem"]["lambda"] for k in runs if k.startswith("method=trades lambda")} == {0.2, 0.3, 0.4}
    dp = runs["method=dp_pgd_at train.norm=group dp.noise_multiplier=0.1 dp.max_grad_norm=10"]["dp"]
    assert (dp["noise_multiplier"], dp["max_grad_norm"]) == (0.1, 10.0)
    assert spec.audit.models >= 64 and spec.resources.gpu > 0 and len(spec.seeds) >= 3
