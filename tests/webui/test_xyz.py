"""InstantID's X/Y/Z plot axes on the stand-in host, with a stand-in of the plot's module.

The stand-in keeps what our code meets of ``scripts/xyz_grid.py`` (1.6–1.10): the module is
found through ``modules.scripts.scripts_data`` under the name ``xyz_grid.py``, ``AxisOption``
has the same signature, ``axis_options`` is a module-level list, values are converted with
``opt.type`` and checked with ``opt.confirm(p, values)`` before the first cell, and every
cell is ``pc = copy(p)``, ``opt.apply(pc, value, values)``, ``process_images(pc)``.
"""

from __future__ import annotations

import csv
import logging
import types
from copy import copy
from io import StringIO
from typing import Any

import pytest
import torch

from instantid_ext.errors import InvalidInputError
from tests.webui import fake_controlnet, fake_host
from tests.webui.test_job import enabled, face_photo, job, no_hooks, sample_spy


# -- a stand-in of the X/Y/Z plot's module ------------------------------------------------------------
class AxisOption:
    def __init__(
        self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None
    ):
        self.label, self.type, self.apply, self.format_value = label, type, apply, format_value
        self.confirm, self.cost, self.choices, self.prepare = confirm, cost, choices, prepare


def make_xyz_module() -> types.ModuleType:
    module = types.ModuleType("xyz_grid.py")
    module.AxisOption = AxisOption
    module.axis_options = [
        AxisOption("Nothing", str, lambda p, x, xs: None),
        AxisOption("Seed", int, lambda p, x, xs: setattr(p, "seed", x)),
    ]
    module.Script = type("Script", (fake_host.Script,), {"__module__": "xyz_grid.py"})
    return module


def load_xyz(module: types.ModuleType | None = None) -> types.ModuleType:
    """What ``load_scripts()`` does for the plot: a fresh module in ``scripts_data``."""
    from modules import scripts

    module = module or make_xyz_module()
    scripts.scripts_data[:] = [
        scripts.ScriptClassData(module.Script, "scripts/xyz_grid.py", "/webui", module),
    ]
    return module


def before_ui() -> None:
    for callback in fake_host.CALLBACKS.get("before_ui", []):
        callback()


def info(cell: fake_host.Processed) -> dict:
    """A cell's infotext entries: its first image's, which the plot shows for the cell."""
    return cell.infotexts[0]


def axis(module: types.ModuleType, label: str) -> AxisOption:
    return next(option for option in module.axis_options if option.label == label)


def plot_values(option: AxisOption, text: str) -> list:
    """The plot's ``process_axis`` for a comma-separated list (no ranges): convert, then confirm."""
    values = [v.strip() for v in next(csv.reader(StringIO(text), skipinitialspace=True))]
    converted = [option.type(v) for v in values]
    if option.confirm:
        option.confirm(None, converted)
    return converted


def plot(
    p: fake_host.Processing, option: AxisOption, text: str, errors: list[Exception] | None = None
) -> list[fake_host.Processed | None]:
    """One row of cells, as the plot's ``cell()`` makes them (WebUI 1.6–1.10): a cell whose
    ``process_images`` raises is shown (``errors``; raised again when none is given) and gets
    an empty result, and the plot goes on with the next cell."""
    values = plot_values(option, text)
    results: list[fake_host.Processed | None] = []
    for value in values:
        pc = copy(p)
        option.apply(pc, value, values)
        try:
            results.append(fake_host.process_images(pc))
        except Exception as err:
            if errors is None:
                raise
            errors.append(err)
            results.append(None)
    p.close()
    return results


@pytest.fixture
def xyz(host) -> types.ModuleType:
    module = load_xyz()
    before_ui()
    return module


@pytest.fixture
def scales(host, monkeypatch) -> list[float]:
    """The ID weight every IP attention patch of the test was built with."""
    seen: list[float] = []
    real_init = host.run.MultiIPAttentionPatch.__init__

    def recording_init(self, unet, adapter, identities, **kwargs):
        (identity,) = identities  # one person: a cast of one
        seen.append(identity.scale)
        real_init(self, unet, adapter, identities, **kwargs)

    monkeypatch.setattr(host.run.MultiIPAttentionPatch, "__init__", recording_init)
    return seen


# -- registration --------------------------------------------------------------------------------------
def test_axes_are_added_once_with_labels_and_choices(xyz, models_path) -> None:
    from instantid_ext.webui import services

    labels = [option.label for option in xyz.axis_options]
    assert labels == [
        "Nothing",
        "Seed",
        "[InstantID] ID weight",
        "[InstantID] IdentityNet strength",
        "[InstantID] ID start",
        "[InstantID] ID end",
        "[InstantID] Saved identity",
        "[InstantID] Pose preset",
    ]
    before_ui()  # a UI reload without a new plot module
    assert [option.label for option in xyz.axis_options] == labels
    assert axis(xyz, "[InstantID] ID weight").type is float  # so the plot expands "0.2-1 [5]"
    assert axis(xyz, "[InstantID] Pose preset").choices()[:2] == ["Front", "Three-quarter left"]
    assert axis(xyz, "[InstantID] Saved identity").choices() == ["None"]
    assert services.save_identity("dana", [face_photo(3)], "largest", 0, True).startswith("Saved")
    assert axis(xyz, "[InstantID] Saved identity").choices() == ["None", "dana"]


def test_a_reloaded_plot_module_gets_the_axes_again(host) -> None:
    from instantid_ext.webui import xyz

    first = load_xyz()
    before_ui()
    fresh = load_xyz()  # the WebUI re-ran the plot's file: a new module with a new list
    before_ui()
    assert sum(o.label.startswith("[InstantID]") for o in first.axis_options) == 6
    assert sum(o.label.startswith("[InstantID]") for o in fresh.axis_options) == 6
    assert xyz.register_axes() == 0


def test_no_plot_script_is_not_an_error(host) -> None:
    from instantid_ext.webui import xyz

    assert xyz.find_xyz_module() is None
    assert xyz.register_axes() == 0


# -- values are checked before the first cell -------------------------------------------------------------
@pytest.mark.parametrize(
    ("label", "text", "message"),
    [
        ("[InstantID] ID weight", "0.5, 2.5", "ID weight takes values from 0 to 2, not 2.5"),
        ("[InstantID] ID end", "nan", "ID end takes values from 0 to 1, not nan"),
        ("[InstantID] IdentityNet strength", "-1", "IdentityNet strength takes values from 0 to 2, not -1"),
        ("[InstantID] Saved identity", "None, nobody", "there is no saved identity 'nobody'"),
        ("[InstantID] Pose preset", "Front, sideways", "Unknown pose preset 'sideways'"),
    ],
)
def test_bad_values_are_refused_in_one_sentence(xyz, label: str, text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match="^X/Y/Z plot") as info:
        plot_values(axis(xyz, label), text)
    assert message in str(info.value)
    assert info.value.status_code == 422  # an API caller gets a 422, not a traceback


def test_good_values_pass(xyz) -> None:
    assert plot_values(axis(xyz, "[InstantID] ID start"), "0, 0.25, 1") == [0.0, 0.25, 1.0]
    assert plot_values(axis(xyz, "[InstantID] Pose preset"), "profile_left, Looking up") == [
        "profile_left",
        "Looking up",
    ]
    assert plot_values(axis(xyz, "[InstantID] Saved identity"), "None") == ["None"]


# -- cells ------------------------------------------------------------------------------------------------
def test_id_weight_axis_sets_each_cells_scale_and_infotext(xyz, host, unet, scales) -> None:
    p = job(host, unet, enabled())
    low, default, high = plot(p, axis(xyz, "[InstantID] ID weight"), "0.5, 0.8, 1.5")
    assert fake_host.HOOK_ERRORS == []
    assert scales == [0.5, 0.8, 1.5]
    assert info(low)["InstantID ID weight"] == "0.5"
    assert "InstantID ID weight" not in info(default)  # the default is not written
    assert info(high)["InstantID ID weight"] == "1.5"
    assert not torch.equal(low.latents, high.latents)
    assert "instantid_overrides" not in vars(p)  # the plot's own p is never changed
    assert not any(key.startswith("InstantID") for key in p.extra_generation_params)
    assert no_hooks(unet)


def test_an_axis_cell_equals_the_panel_set_to_that_value(xyz, host, unet) -> None:
    (by_axis,) = plot(job(host, unet, enabled()), axis(xyz, "[InstantID] ID weight"), "0.3")
    by_panel = fake_host.run_job(job(host, unet, enabled(id_weight=0.3)))
    assert torch.equal(by_axis.latents, by_panel.latents)
    assert info(by_axis) == info(by_panel)


def test_id_range_axes(xyz, host, unet) -> None:
    p = job(host, unet, enabled(id_end=0.9))
    (cell,) = plot(p, axis(xyz, "[InstantID] ID start"), "0.25")
    assert info(cell)["InstantID ID range"] == "0.25-0.9"


def test_start_after_the_panels_end_fails_that_cell_with_the_sentence(xyz, host, unet) -> None:
    """The plot shows the failing cell's error and goes on: the next cell equals that cell's
    settings as a job of its own, and nothing of the failed cell is left on the UNet."""
    errors: list[Exception] = []
    p = job(host, unet, enabled(id_end=0.5))
    failed, after = plot(p, axis(xyz, "[InstantID] ID start"), "0.75, 0.25", errors)
    assert failed is None and after is not None
    (error,) = errors
    assert isinstance(error, InvalidInputError)
    assert "id_start" in str(error) and "id_end" in str(error)
    alone = fake_host.run_job(job(host, unet, enabled(id_start=0.25, id_end=0.5)))
    assert torch.equal(after.latents, alone.latents)
    assert no_hooks(unet)


def test_identity_axis_switches_instantid_on(xyz, host, unet, models_path) -> None:
    from instantid_ext.webui import services

    assert services.save_identity("erin", [face_photo(2)], "largest", 0, True).startswith("Saved")
    off = {"enabled": False, "control_weight": 0.0}  # a panel switched off, IdentityNet at 0
    plain = fake_host.run_job(job(host, unet, off))
    none, erin = plot(job(host, unet, off), axis(xyz, "[InstantID] Saved identity"), "None, erin")
    assert fake_host.HOOK_ERRORS == []
    assert torch.equal(none.latents, plain.latents)  # "None" with the panel off: InstantID stays off
    assert info(none) == {}
    assert info(erin)["InstantID"] == "on"
    assert info(erin)["InstantID identity"] == "erin"
    assert info(erin)["InstantID source"] == "identity:erin"
    # The same as the panel with that identity (the panel's other values are the defaults).
    by_panel = fake_host.run_job(job(host, unet, {**off, "enabled": True, "identity": "erin"}))
    assert torch.equal(erin.latents, by_panel.latents)


def test_identity_axis_keeps_the_panels_settings(xyz, host, unet, models_path, scales) -> None:
    from instantid_ext.webui import services

    assert services.save_identity("erin", [face_photo(2)], "largest", 0, True).startswith("Saved")
    p = job(host, unet, enabled(id_weight=1.2))
    photo, erin = plot(p, axis(xyz, "[InstantID] Saved identity"), "None, erin")
    assert scales == [1.2, 1.2]
    assert info(photo)["InstantID source"].startswith("images:")
    assert info(erin)["InstantID source"] == "identity:erin"


def test_other_axes_with_the_panel_off_change_nothing_and_warn(xyz, host, unet, caplog) -> None:
    plain = fake_host.run_job(job(host, unet, False))
    caplog.set_level(logging.WARNING, logger="instantid_ext")
    instantid_logger = logging.getLogger("instantid_ext")
    instantid_logger.addHandler(caplog.handler)  # ours does not propagate to the root logger
    try:
        (cell,) = plot(job(host, unet, False), axis(xyz, "[InstantID] ID weight"), "0.5")
    finally:
        instantid_logger.removeHandler(caplog.handler)
    assert torch.equal(cell.latents, plain.latents)
    assert info(cell) == {}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "id_weight=0.5" in warnings[0]
    assert "the InstantID panel is off" in warnings[0]
    assert no_hooks(unet)


def test_pose_preset_axis_makes_the_preset_the_pose_source(xyz, host, unet) -> None:
    p = job(host, unet, enabled())
    front, profile = plot(p, axis(xyz, "[InstantID] Pose preset"), "Front, Profile left")
    assert info(front)["InstantID pose"] == "preset"
    assert "InstantID pose preset" not in info(front)  # "front" is the default
    assert info(profile)["InstantID pose"] == "preset"
    assert info(profile)["InstantID pose preset"] == "profile_left"


def test_identitynet_strength_axis_sets_the_units_weight(
    xyz, host, unet, monkeypatch, with_identitynet
) -> None:
    cn = fake_controlnet.install(monkeypatch)
    option = axis(xyz, "[InstantID] IdentityNet strength")
    weights: list[Any] = []
    for value in plot_values(option, "0.4, 1.1"):
        pc = copy(job(host, unet, enabled(control_weight=0.8), cn=cn))
        option.apply(pc, value, [value])
        record: dict = {}
        sample_spy(pc, record)
        result = fake_host.run_job(pc)
        weights.append([q.weight for q in record["params"]])
        assert info(result)["InstantID IdentityNet weight"] == str(value)
    assert fake_host.HOOK_ERRORS == []
    assert weights == [[0.4], [1.1]]
    assert no_hooks(unet)
