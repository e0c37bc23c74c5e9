"""One stand-in WebUI process that lives across jobs, as a real server does.

The other stand-in tests build a fresh ``p`` *and* fresh script objects per job. A real WebUI
keeps one script runner per tab, so each tab has one ControlNet script object for the whole
life of the process, and ControlNet keeps its per-job state on it (its network on the UNet,
its enabled units) until that tab's next job. Faults that one job leaves for the next, or for
the other tab, only show on such a server: :class:`FakeServer` runs any number of txt2img and
img2img jobs on one UNet with persistent per-tab runners and answers each like the API does
(the images' latents, or the status code and message of the error).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from tests.webui import fake_controlnet, fake_host

TABS = ("txt2img", "img2img")


@dataclass
class Answer:
    """What an API request got back: 200 with the latents, or an error code and its message."""

    status: int
    latents: torch.Tensor | None = None
    detail: str = ""
    params: dict = field(default_factory=dict)

    def same_image(self, other: Answer) -> bool:
        return (
            self.status == other.status == 200
            and self.latents is not None
            and other.latents is not None
            and torch.equal(self.latents, other.latents)
        )


class ModelSwap:
    """A script after ours whose ``process_batch`` loads another checkpoint (as a refiner switch
    or another extension could), so our check at sampling is the one that refuses."""

    args_from = args_to = 0

    def __init__(self) -> None:
        self.model: Any = None

    def title(self) -> str:
        return "Model swap"

    def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        if self.model is not None:
            p.sd_model = self.model


class FakeServer:
    """Two tabs on one UNet; ``units`` ControlNet slots per tab, all off unless a job sets them."""

    def __init__(self, host: Any, unet: torch.nn.Module, cn: fake_controlnet.FakeControlNet, units: int = 3):
        self.host = host
        self.unet = unet
        self.cn = cn
        self.units = units
        self.sd_model = fake_host.fake_sd_model(unet)
        self.runners: dict[str, Any] = {}
        self.swaps: dict[str, ModelSwap] = {}
        for tab in TABS:
            cn_script, ours, swap = cn.Script(), host.InstantIDScript(), ModelSwap()
            cn_script.args_from, cn_script.args_to = 0, units
            ours.args_from, ours.args_to = units, units + 1
            swap.args_from = swap.args_to = units + 1
            self.runners[tab] = fake_host.ScriptRunner([cn_script, ours, swap])
            self.swaps[tab] = swap
        runners = sys.modules["modules.scripts"]
        runners.scripts_txt2img, runners.scripts_img2img = self.runners["txt2img"], self.runners["img2img"]

    def controlnet(self, tab: str) -> Any:
        return self.runners[tab].alwayson_scripts[0]

    def request(
        self,
        tab: str,
        instantid: Any = False,
        *,
        units: tuple = (),
        swap_model_at_sampling: Any = None,
        **settings: Any,
    ) -> Answer:
        """One API request: a new ``p`` on the tab's runner, run ``with closing(p)``."""
        slots = tuple(units) + tuple(self.cn.unit(enabled=False) for _ in range(self.units - len(units)))
        cls = fake_host.ProcessingImg2Img if tab == "img2img" else fake_host.Processing
        p = cls(
            sd_model=self.sd_model,
            script_args=(*slots, instantid),
            scripts=self.runners[tab],
            **settings,
        )
        self.swaps[tab].model = swap_model_at_sampling
        try:
            result = fake_host.run_job(p)
        except Exception as err:  # the API: an HTTPException's code, else 500
            return Answer(int(vars(err).get("status_code", 500)), detail=f"{type(err).__name__}: {err}")
        finally:
            self.swaps[tab].model = None
        return Answer(200, result.latents, params=dict(result.extra_generation_params))


def sd15_model(unet: torch.nn.Module) -> Any:
    """The same UNet presented as an SD1.5 checkpoint (what the SDXL checks look at)."""
    return fake_host.fake_sd_model(unet, is_sdxl=False)
