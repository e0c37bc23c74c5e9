"""IdentityNet's model name for a job, with one copy of the network in ControlNet's cache."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from ...errors import ModelFileError
from ...models.discovery import DIFFUSERS_WEIGHTS, short_hash
from .access import ControlNetAccess, Owner

logger = logging.getLogger(__name__)


#: ControlNet types a model as InstantID (and then demands an IP-Adapter unit before it)
#: when this appears anywhere in the lower-cased path of the file it loads.
CN_INSTANTID_PATH_MARK = "instant_id"


#: Stem of the model name a job registers when ControlNet's own name for the file would be
#: typed InstantID. "xl" makes ControlNet's version check see an SDXL model; no "instant_id",
#: "shuffle", "sd15" or punctuation that ControlNet's infotext refuses.
MODEL_KEY_STEM = "InstantID-IdentityNet-SDXL"


class ModelSharing(ControlNetAccess):
    """Names IdentityNet for ControlNet and shares its cached network."""

    def identitynet_model_key(self, owner: Owner, p: Any, path: Path) -> str:
        """The model name for our unit, with ControlNet set up to load ``path`` under it once.

        ``path`` is a single diffusers-format ``.safetensors`` or a diffusers folder. When
        ControlNet lists the file under a name it types as a plain ControlNet, that name is
        returned: ControlNet's cache then holds one model for our unit and the user's.
        Otherwise a name of our own is registered for the job, and ControlNet's loader is
        patched for the job to build it from the network it already caches for the same file
        (any name), or else to load it once, typed as a plain ControlNet.
        """
        weights = _weights_file(Path(path))
        with self._internals("register the IdentityNet model"):
            models = self._gs.cn_models
            for name, listed in list(models.items()):
                if _same_file(listed, weights) and CN_INSTANTID_PATH_MARK not in str(listed).lower():
                    return str(name)
            key = f"{MODEL_KEY_STEM} [{short_hash(weights)[:8]}]"
            self._set_model_entry(owner, key, str(weights.absolute()))
            script_cls = type(self._cn_script(p))
            self._drop_duplicate(script_cls, key, weights)
            self._patch_loader(owner, script_cls, key, weights)
        return key

    def share_model_cache(self, p: Any) -> None:
        """Let this tab's ControlNet use the models the other tab cached for the same checkpoint.

        ControlNet's model cache is one per process, but each tab's script remembers on its own
        the checkpoint it last ran with, and empties the whole cache when that differs from the
        job's (it starts with none): the first ControlNet job of the second tab reloaded
        IdentityNet from disk though the cache held it for the very checkpoint in use. When the
        other tab's script last ran with this checkpoint, this tab's script is told so: the value
        its own ``process`` is about to write anyway.
        """
        script = self._cn_script(p)
        current = getattr(getattr(p, "sd_model", None), "sd_model_hash", None)
        if current is None or getattr(script, "latest_model_hash", current) == current:
            return
        runners = sys.modules.get("modules.scripts")
        for name in ("scripts_txt2img", "scripts_img2img"):
            other = self._ec.find_cn_script(getattr(runners, name, None))
            if other not in (None, script) and getattr(other, "latest_model_hash", None) == current:
                script.latest_model_hash = current
                return

    def _set_model_entry(self, owner: Owner, key: str, path: str) -> None:
        models = self._gs.cn_models
        if models.get(key) == path:
            return
        missing = object()
        previous = models.get(key, missing)
        models[key] = path

        def undo() -> None:
            if models.get(key) != path:
                return
            if previous is missing:
                del models[key]
            else:
                models[key] = previous

        owner.own(f"ControlNet's model list entry '{key}'", undo)

    def _cached_entry(self, script_cls: type, weights: Path, exclude: str) -> Any:
        """The ``ControlModel`` ControlNet's cache holds for this file under another name, or None."""
        models = self._gs.cn_models
        for name, entry in list(getattr(script_cls, "model_cache", {}).items()):
            if name == exclude:
                continue
            listed = models.get(name)
            if listed is not None and _same_file(listed, weights):
                return entry
        return None

    def _drop_duplicate(self, script_cls: type, key: str, weights: Path) -> None:
        """Forget our cache entry if it holds a second copy of a network cached under another name."""
        cache = getattr(script_cls, "model_cache", None)
        if not cache or key not in cache:
            return
        other = self._cached_entry(script_cls, weights, exclude=key)
        if other is not None and other.model is not cache[key].model:
            del cache[key]
            logger.info("Dropped a second copy of IdentityNet from ControlNet's model cache")

    def _patch_loader(self, owner: Owner, script_cls: type, key: str, weights: Path) -> None:
        """For this job, make ControlNet build ``key`` as a plain ControlNet sharing a cached network."""
        original = script_cls.__dict__.get("build_control_model")
        if original is None:
            msg = "ControlNet's Script has no build_control_model"
            raise AttributeError(msg)
        build = original.__func__ if isinstance(original, staticmethod) else original
        plain = self._hook.ControlModelType.ControlNet
        active = [True]

        def build_control_model(p: Any, unet: Any, model: Any) -> Any:
            if not active[0] or model != key:
                return build(p, unet, model)
            shared = self._cached_entry(script_cls, weights, exclude=key)
            if shared is not None:
                logger.info("IdentityNet shares the network ControlNet already holds for %s", weights.name)
                return shared._replace(type=plain)
            return build(p, unet, model)._replace(type=plain)

        patched = staticmethod(build_control_model)
        script_cls.build_control_model = patched

        def undo() -> None:
            active[0] = False  # a later patch may wrap ours: then ours just passes through
            if script_cls.__dict__.get("build_control_model") is patched:
                script_cls.build_control_model = original

        owner.own("ControlNet's model loader", undo)


def _same_file(listed: object, path: Path) -> bool:
    """Whether a path from ControlNet's model list is ``path`` (quotes trimmed, as ControlNet does)."""
    text = str(listed)
    if len(text) > 1 and text[0] == text[-1] == '"':
        text = text[1:-1]
    try:
        return Path(text).samefile(path)
    except OSError:
        return os.path.normcase(Path(text).absolute()) == os.path.normcase(path.absolute())


def _weights_file(path: Path) -> Path:
    """The file ControlNet should load: ``path`` itself, or a diffusers folder's weights."""
    if path.is_dir():
        found = next((path / name for name in DIFFUSERS_WEIGHTS if (path / name).is_file()), None)
        if found is None:
            msg = f"The IdentityNet folder '{path}' has no '{DIFFUSERS_WEIGHTS[0]}'; put the file there."
            raise ModelFileError(msg)
        return found
    if not path.is_file():
        msg = f"The IdentityNet file '{path}' does not exist."
        raise ModelFileError(msg)
    if path.suffix.lower() != ".safetensors":
        msg = f"The IdentityNet file '{path.name}' must be a .safetensors file for ControlNet to load it."
        raise ModelFileError(msg)
    return path
