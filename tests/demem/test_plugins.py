"""Plugins through entry points: an installed distribution's names are registered like built-ins,
with their origin; a broken, clashing or duplicated plugin is refused with one error naming the
distribution while everything else keeps working. Each test installs a throw-away distribution (a
`*.dist-info` with `entry_points.txt`, and its module) on sys.path, as pip would."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from demem import plugins, testing
from demem.data import DATASETS
from demem.methods import METHODS
from demem.models import MODELS
from demem.privacy.attacks import MIA
from demem.registry import PluginError

REGISTRIES = (DATASETS, MODELS, METHODS, MIA)


@pytest.fixture
def install(tmp_path, monkeypatch):
    """install(dist, {group: {name: "module:attr"}}, {module: source}) puts a distribution on sys.path."""
    added: list[str] = []

    def _install(dist: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str]) -> None:
        info = tmp_path / f"{dist}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        lines = []
        for group, names in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{name} = {target}" for name, target in names.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for module, source in modules.items():
            (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
            added.append(module)
        for reg in REGISTRIES:
            reg.reload_plugins()

    monkeypatch.syspath_prepend(str(tmp_path))
    yield _install
    monkeypatch.undo()
    for module in added:
        sys.modules.pop(module, None)
    for reg in REGISTRIES:
        reg.reload_plugins()


METHOD_SOURCE = """
    from demem.methods import Method, MethodOutput
    import torch.nn.functional as F

    def _none(model, x, y, attack, cfg, generator=None):
        return None

    def _loss(model, x, x_adv, y, cfg):
        logits = model(x).float()
        ce = F.cross_entropy(logits, y, reduction="none")
        return MethodOutput(ce.mean(), ce, logits)

    SMOOTH = Method(_none, _loss)
"""


def test_a_plugin_method_is_registered_with_its_origin_and_passes_the_checks(install):
    install("good-plugin", {"demem.methods": {"plain_ce": "good_mod:SMOOTH"}}, {"good_mod": METHOD_SOURCE})
    assert "plain_ce" in METHODS.names()
    assert METHODS.origin("plain_ce") == "plugin good-plugin 0.1"
    assert METHODS.origin("pgd_at") == "built-in"
    testing.check_method("plain_ce")
    rows = plugins.origins([{"method": {"name": "plain_ce"}, "train": {"arch": "small-cnn"}}], ["loss"])
    assert ("method.name", "plain_ce", "plugin good-plugin 0.1") in rows and (
        "train.arch",
        "small-cnn",
        "built-in",
    ) in rows


def test_a_plugin_that_fails_to_import_names_its_distribution_and_the_rest_keeps_working(install):
    install(
        "broken-plugin",
        {"demem.methods": {"broken": "broken_mod:X"}},
        {"broken_mod": "raise ImportError('no torch_geometric')\n"},
    )
    with pytest.raises(
        PluginError, match=r"method 'broken' from plugin broken-plugin 0.1 .*ImportError: no torch_geometric"
    ):
        METHODS.get("broken")
    assert METHODS.get("pgd_at") is not None and "broken" not in METHODS.names()
    assert any("broken-plugin" in p for p in plugins.problems())
    with pytest.raises(ValueError, match="plugins that failed to load: broken"):
        METHODS.get("no_such_method")


def test_a_plugin_with_a_builtins_name_or_a_wrong_object_is_refused(install):
    install(
        "clash-plugin",
        {
            "demem.methods": {"pgd_at": "clash_mod:SMOOTH", "not_a_method": "clash_mod:NOT"},
            "demem.models": {"bad": "clash_mod:NOT"},
        },
        {"clash_mod": METHOD_SOURCE + "\n    NOT = 3\n"},
    )
    assert METHODS.origin("pgd_at") == "built-in"
    assert any("'pgd_at' from plugin clash-plugin 0.1" in p and "built-in" in p for p in METHODS.problems())
    with pytest.raises(PluginError, match="must be a demem.methods.Method"):
        METHODS.get("not_a_method")
    with pytest.raises(PluginError, match="clash-plugin.*must be a factory"):
        MODELS.get("bad")


def test_two_distributions_with_one_name_are_both_refused(install):
    install("first-plugin", {"demem.methods": {"twice": "first_mod:SMOOTH"}}, {"first_mod": METHOD_SOURCE})
    install("second-plugin", {"demem.methods": {"twice": "second_mod:SMOOTH"}}, {"second_mod": METHOD_SOURCE})
    with pytest.raises(PluginError, match="first-plugin 0.1; second-plugin 0.1"):
        METHODS.get("twice")


def test_a_spec_naming_a_broken_plugin_is_refused_naming_it_and_others_validate(install, tmp_path, capsys):
    from orchestrator.cli import main

    install("broken-plugin", {"demem.methods": {"broken": "broken_mod2:X"}}, {"broken_mod2": "1 / 0\n"})
    spec = tmp_path / "s.yaml"
    audit = "seeds: [0]\naudit: {models: 4, attacks: [loss]}\n"
    spec.write_text("name: s\nbase: {method: {name: broken}, data: {pool_size: 64}}\n" + audit)
    assert main(["validate", str(spec), "--no-data-check"]) == 2
    err = capsys.readouterr().err
    assert "broken-plugin 0.1" in err and "ZeroDivisionError" in err
    spec.write_text("name: s\nbase: {method: {name: pgd_at}, data: {pool_size: 64}}\n" + audit)
    assert main(["validate", str(spec), "--no-data-check"]) == 0
    out = capsys.readouterr().out
    assert (
        "method.name pgd_at" in out
        and "built-in" in out
        and "warning: method 'broken' from plugin broken-plugin" in out
    )


DATASET_SOURCE = """
    from pathlib import Path
    import numpy as np
    import torch
    from demem.data import DatasetEntry, DatasetInfo, Split

    INFO = DatasetInfo(name="tiny-arrays", channels=1, image_size=8, num_classes=3, mean=(0.5,), std=(0.25,),
                       eps=0.1, crop_pad=1, flip=False, fetch_hint="write tiny.npz", sizes=(40, 20))

    def load(directory: Path):
        path = Path(directory) / "tiny.npz"
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            return tuple(Split(torch.from_numpy(z[f"x_{s}"]).contiguous(), torch.from_numpy(z[f"y_{s}"]).long())
                         for s in ("train", "test"))

    ENTRY = DatasetEntry(INFO, load, "tiny.npz with x_train, y_train, x_test, y_test")
"""


def test_a_plugin_dataset_loads_into_a_pool_and_passes_the_check(install, tmp_path):
    from demem.data import dataset_info, make_pool

    install("data-plugin", {"demem.datasets": {"tiny-arrays": "data_mod:ENTRY"}}, {"data_mod": DATASET_SOURCE})
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    root.mkdir()
    arrays = {
        "x_train": rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8),
        "y_train": rng.integers(0, 3, 40),
        "x_test": rng.integers(0, 256, (20, 1, 8, 8), dtype=np.uint8),
        "y_test": rng.integers(0, 3, 20),
    }
    np.savez(root / "tiny.npz", **arrays)
    assert DATASETS.origin("tiny-arrays") == "plugin data-plugin 0.1"
    assert dataset_info("tiny-arrays").num_classes == 3
    testing.check_dataset("tiny-arrays", root)
    pool = make_pool("tiny-arrays", root=root)
    assert pool.n == 60
    np.testing.assert_array_equal(pool.images[:40].numpy(), arrays["x_train"])
    np.testing.assert_array_equal(pool.labels[40:].numpy(), arrays["y_test"])
