"""IdentityNet through sd-webui-controlnet: one ControlNet unit that InstantID drives itself.

IdentityNet is an SDXL ControlNet whose cross-attention context is the 16 face tokens
instead of the prompt. ControlNet can run such a model (its own InstantID mode), but only
for files whose path contains ``instant_id`` and only right after an IP-Adapter unit. So a
job lets ControlNet run our file as a *plain* ControlNet, puts one enabled unit into a free
ControlNet slot, and once ControlNet has built its per-unit parameters switches that unit
(and only it) to ControlNet's InstantID context path with our face tokens and our hint,
drawn in the coordinates the sampler really uses.

One copy of IdentityNet in memory: when ControlNet lists the file under a name it types as
a plain ControlNet, the job uses that very name, so ControlNet's model cache holds one entry
shared with any unit of the user's. Otherwise (the file's path contains ``instant_id``) the
job registers a name of its own and, for the duration of the job, lets ControlNet's loader
build that name from the network ControlNet already holds for the same file, typed as a
plain ControlNet. No file is created or renamed.

ControlNet is reached only through ``sys.modules``: importing it by a dotted extension path
would create a second copy of its modules (and of its registries). If it is missing or
older than :data:`MIN_CONTROLNET`, :meth:`ControlNetBridge.detect` raises one
:class:`DependencyError` naming the version to install. Every change a job makes to the job
or to ControlNet is registered with that job (:class:`Owner`) and undone when it closes.

ControlNet internals used (identical from 1.1.444 to 1.1.455 unless noted):

- ``scripts.controlnet_version.version_flag`` ("v1.1.455").
- ``scripts.external_code``: ``ControlNetUnit``, ``ResizeMode``, ``ControlMode``,
  ``find_cn_script``, ``to_processing_unit`` (a dict without ``enabled`` is enabled at
  1.1.444-1.1.447 and disabled from 1.1.448 on).
- ``scripts.global_state.cn_models``: the model name -> file path dict ControlNet loads from.
- The ControlNet ``Script`` class: ``model_cache`` (name -> ``ControlModel(model, type)``)
  and the static ``build_control_model(p, unet, name)`` its ``load_control_model`` calls.
- ``scripts.supported_preprocessor.Preprocessor`` (added in 1.1.444): the preprocessor registry.
- ``scripts.hook``: ``ControlModelType``, ``ImageEmbed`` (the class ``UnetHook`` checks with
  ``isinstance``) and ``mark_prompt_context``; ``ControlParams.hint_cond`` (a setter that
  makes the hook re-read it), ``hr_hint_cond`` and, from 1.1.446, ``effective_region_mask``.
- The ControlNet script object: ``args_from``/``args_to``, ``enabled_units`` and
  ``latest_network.control_params`` (one ``ControlParams`` per enabled unit, same order).
"""

from .access import MIN_CONTROLNET, TESTED_CONTROLNET, Owner, Version, parse_version
from .bridge import ControlNetBridge
from .cleanup import finish_failed_job, forget_marked_prompts
from .model_sharing import CN_INSTANTID_PATH_MARK, MODEL_KEY_STEM
from .preprocessor import PREPROCESSOR_LABEL, PREPROCESSOR_NAME, PREPROCESSOR_TAG, keypoint_image
from .unit import InjectedUnit, hint_size

__all__ = [
    "CN_INSTANTID_PATH_MARK",
    "MIN_CONTROLNET",
    "MODEL_KEY_STEM",
    "PREPROCESSOR_LABEL",
    "PREPROCESSOR_NAME",
    "PREPROCESSOR_TAG",
    "TESTED_CONTROLNET",
    "ControlNetBridge",
    "InjectedUnit",
    "Owner",
    "Version",
    "finish_failed_job",
    "forget_marked_prompts",
    "hint_size",
    "keypoint_image",
    "parse_version",
]
