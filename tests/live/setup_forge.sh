#!/usr/bin/env bash
# Build a real host of the Forge line with this extension, running on the CPU without network
# access at run time: the Forge counterpart of setup_webui.sh, with the same random-weight models.
# HOST is one of
#   classic   Forge Classic (Haoming02/sd-webui-forge-classic, branch classic, commit 5136ce20)
#   reforge   reForge (Panchovix/stable-diffusion-webui-reForge, branch main, commit 3b56b268)
#
#   tests/live/setup_forge.sh HOST [TARGET]  # default TARGET: /tmp/instantid-forge-classic or
#                                            # /tmp/instantid-reforge
#   TARGET/run.sh                            # start the server (port 7860; PORT=... to change)
#   TARGET/wait.sh                           # wait until /instantid/v1/version answers
#   SD_WEBUI_URL=http://127.0.0.1:7860 python -m pytest -q tests/live
#
# Every step is skipped when its result exists, so re-running is cheap. What it does:
#  1. clones the host at a fixed commit into TARGET/<its repository name>.
#     - Forge Classic clones nothing at launch (ldm and sgm are vendored); the bed clones
#       Stability-AI's generative-models and stablediffusion (the commits setup_webui.sh uses)
#       into TARGET/src, only to write the random checkpoints from their model definitions.
#     - reForge clones the WebUI's five repositories at launch; the bed clones them into its
#       repositories/ folder at the commits reForge pins (see webui_repositories in bed_lib.sh).
#     Both pip-install OpenAI's CLIP from an archive of one commit; the bed clones it into TARGET/src;
#  2. makes TARGET/venv (Python 3.11; Forge Classic requires it, reForge accepts 3.7-3.13) with the
#     host's requirements in the order its modules/launch_utils.py installs them, what its built-in
#     legacy preprocessors install (less mediapipe), ONNX Runtime, insightface and a torch (below).
#     reForge pins pydantic 1.10.15 as a wheel from a GitHub release; the bed installs PyPI's
#     pydantic 1.10.15 instead, and protobuf 3.20.3 for its 3.20.0 (onnx needs >= 3.20.2);
#  3. links this checkout as extensions/sd-webui-instantid (INSTANTID_LIVE_EXT_MODE=copy copies it),
#     and the live suite's helper extensions tests/live/painter and tests/live/probe (if present) as
#     instantid-live-painter and instantid-live-probe;
#  4. writes the random-weight models of setup_webui.sh (tests/live/webui_bed.py with --host forge:
#     the face pack goes to models/insightface, where Forge's built-in InstantID also looks), a
#     local Hugging Face cache for CLIP-L's tokenizer and the settings;
#  5. writes TARGET/run.sh and TARGET/wait.sh (--always-cpu, the prepared environment kept).
#
# Sources: GitHub by default. INSTANTID_LIVE_GIT_URL is a template for every repository's URL, with
# {owner} and {name} replaced (e.g. '/srv/mirrors/{owner}+{name}.git'); FORGE_CLASSIC_REPO,
# REFORGE_REPO, STABLE_DIFFUSION_REPO, STABLE_DIFFUSION_XL_REPO, K_DIFFUSION_REPO, BLIP_REPO,
# ASSETS_REPO and CLIP_REPO replace single URLs. Forge Classic's commit is also in forks of it (e.g.
# fajarnnn/sd-webui-reforge-classic): FORGE_CLASSIC_REPO may name one.
# Other settings (environment variables), all optional:
#   PYTHON                    a Python 3.11 (default: python3.11, else python3)
#   INSTANTID_LIVE_TORCH      pip arguments for torch and torchvision (default: the versions the host
#                             pins, as PyPI builds them: 'torch==2.8.0 torchvision==0.23.0' for
#                             Forge Classic, 'torch==2.9.0 torchvision==0.24.0' for reForge; they
#                             run on the CPU too). The two must be built for each other: a CPU
#                             torch needs a CPU torchvision from the same index (see
#                             setup_webui.sh); the script stops with a sentence when they clash.
#   INSTANTID_LIVE_INSIGHTFACE pip spec of insightface, installed with --no-deps and its imports
#                             listed (default insightface==0.7.3, the version both hosts install;
#                             it builds with a C++ compiler and Cython)
#   INSTANTID_LIVE_DIFFUSERS  pip spec of the diffusers used to write the IdentityNet files (not
#                             installed into the server's environment; default diffusers==0.31.0)
#   INSTANTID_LIVE_SEED       seed of the random-weight models (default 1234)
#   INSTANTID_LIVE_EXT_MODE   'link' (default) or 'copy': how this checkout goes into extensions/
#   INSTANTID_LIVE_MODELS_FROM the models folder of a bed built with the same seed (e.g.
#                             /tmp/instantid-webui/stable-diffusion-webui/models): its random models
#                             are hard-linked (else copied) instead of written again. The same seed
#                             gives the same tensors; about 20 GB of disk are saved. InstantID's
#                             ip-adapter.bin is written anew unless the folder is a Forge bed's: the
#                             A1111 bed's is in torch's legacy format, which Forge's ControlNet
#                             loader cannot read.
# Stop the server with Ctrl+C or by killing the run.sh process.
set -euo pipefail

HOST=${1:-}
case $HOST in
classic)
    HOST_NAME="Forge Classic" HOST_DIR=sd-webui-forge-classic
    HOST_URL_NAME=Haoming02/sd-webui-forge-classic HOST_URL=${FORGE_CLASSIC_REPO:-}
    HOST_COMMIT=5136ce20e685b9c3752581d029a80434f9523fc5
    DEFAULT_TORCH="torch==2.8.0 torchvision==0.23.0"  # modules/launch_utils.py:272 (+cu128)
    ;;
reforge)
    HOST_NAME="reForge" HOST_DIR=stable-diffusion-webui-reForge
    HOST_URL_NAME=Panchovix/stable-diffusion-webui-reForge HOST_URL=${REFORGE_REPO:-}
    HOST_COMMIT=3b56b268ad9158ee8b30900973b6ccda4ec22241
    DEFAULT_TORCH="torch==2.9.0 torchvision==0.24.0"  # modules/launch_utils.py:372
    ;;
*)
    echo "usage: $0 classic|reforge [TARGET]" >&2
    exit 2
    ;;
esac
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DEFAULT_TARGET=/tmp/instantid-forge-classic
[[ $HOST == reforge ]] && DEFAULT_TARGET=/tmp/instantid-reforge
TARGET=${2:-${INSTANTID_LIVE_DIR:-$DEFAULT_TARGET}}
mkdir -p "$TARGET"
TARGET=$(cd "$TARGET" && pwd)
FORGE=$TARGET/$HOST_DIR
VENV=$TARGET/venv
SRC=$TARGET/src
SEED=${INSTANTID_LIVE_SEED:-1234}
GITHUB_TEMPLATE='https://github.com/{owner}/{name}.git'
URL_TEMPLATE=${INSTANTID_LIVE_GIT_URL:-$GITHUB_TEMPLATE}
TORCH_SPEC=${INSTANTID_LIVE_TORCH:-$DEFAULT_TORCH}
INSIGHTFACE_SPEC=${INSTANTID_LIVE_INSIGHTFACE:-insightface==0.7.3}
DIFFUSERS_SPEC=${INSTANTID_LIVE_DIFFUSERS:-diffusers==0.31.0}
if [[ -z ${PYTHON:-} ]]; then
    PYTHON=$(command -v python3.11 || command -v python3)
fi

say() { printf '\n[setup_forge %s] %s\n' "$HOST" "$*"; }

# url_for, checkout, webui_repositories, openai_clip, make_venv, check_torch_pair, install_extensions,
# write_scripts
# shellcheck source=tests/live/bed_lib.sh
source "$HERE/bed_lib.sh"

# ---------------------------------------------------------------------------------------------
say "1/5 sources in $TARGET"
checkout "$(url_for "$HOST_URL_NAME" "$HOST_URL")" "$HOST_COMMIT" "$FORGE"
if [[ $HOST == classic ]]; then
    # Only for writing the random checkpoints (webui_bed.py builds them from these model definitions).
    checkout "$(url_for Stability-AI/generative-models "${STABLE_DIFFUSION_XL_REPO:-}")" \
        45c443b316737a4ab6e40413d7794a7f5657c19f "$SRC/generative-models"
    checkout "$(url_for Stability-AI/stablediffusion "${STABLE_DIFFUSION_REPO:-}")" \
        cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf "$SRC/stablediffusion"
    LDM_SRC=$SRC/stablediffusion SGM_SRC=$SRC/generative-models
else
    webui_repositories "$FORGE"
    LDM_SRC=$FORGE/repositories/stable-diffusion-stability-ai SGM_SRC=$FORGE/repositories/generative-models
fi
# Both hosts pip-install OpenAI's CLIP from a GitHub archive of this commit.
openai_clip "$SRC/CLIP"

# ---------------------------------------------------------------------------------------------
say "2/5 Python environment in $VENV"
make_venv
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "  warning: the bed is made for Python 3.11; $VENV has $("$PY" -V 2>&1)" >&2
fi
if [[ ! -f $VENV/.instantid-live-ready ]]; then
    REQ=$TARGET/requirements-live.txt
    {
        if [[ $HOST == classic ]]; then
            echo "# Forge Classic's requirements.txt (torch apart), then what launch_utils.py, its legacy"
            echo "# preprocessors (install.py) and InstantID install."
            grep -v -E '^torch\s*$' "$FORGE/requirements.txt"
        else
            echo "# reForge's requirements_versions.txt (torch apart; PyPI's pydantic 1.10.15 for its"
            echo "# GitHub-release wheel), then what its legacy preprocessors (install.py) and InstantID install."
            # protobuf: reForge pins 3.20.0, but onnx (insightface) needs >= 3.20.2 (as setup_webui.sh).
            grep -v -E '^torch\s*$' "$FORGE/requirements_versions.txt" |
                sed -E -e 's#^https://.*/pydantic-1\.10\.15-py3-none-any\.whl\s*$#pydantic==1.10.15#' \
                    -e 's/^protobuf==3\.20\.0/protobuf==3.20.3/'
        fi
        # extensions-builtin/forge_legacy_preprocessors/requirements.txt, less mediapipe (only its
        # mediapipe_face preprocessor imports it).
        echo "addict"
        echo "fvcore"
        echo "onnx"
        echo "svglib==1.5.1"  # newer svglib builds pycairo from source
        echo "yapf"
        # InstantID (requirements.txt of this repository); insightface comes below, --no-deps.
        echo "onnxruntime"
        # insightface 0.7.3's imports (it is installed without its dependencies, as Forge does).
        echo "easydict"
        echo "matplotlib"
        echo "prettytable"
        echo "scikit-learn"
        echo "cython"  # builds insightface 0.7.3
        echo "wheel"   # builds OpenAI CLIP below without fetching build tools
    } >"$REQ"
    if [[ $HOST == classic ]]; then
        # In Forge Classic's order: Gradio first, then requirements.txt, whose Pillow==11.2.1
        # replaces the Pillow<11 that gradio 3.43.2 asks for (pip warns; the host runs that way).
        # shellcheck disable=SC2086  # TORCH_SPEC is a list of pip arguments
        "$PY" -m pip install -q $TORCH_SPEC gradio==3.43.2 packaging==24.2
    else
        # In reForge's order: torch, wheel and setuptools 69.5.1, CLIP, then the requirements.
        # shellcheck disable=SC2086
        "$PY" -m pip install -q $TORCH_SPEC wheel setuptools==69.5.1
    fi
    # shellcheck disable=SC2086
    "$PY" -m pip install -q $TORCH_SPEC -r "$REQ"
    check_torch_pair
    "$PY" -m pip install -q --no-deps --no-build-isolation "$SRC/CLIP"
    "$PY" -m pip install -q --no-deps --no-build-isolation "$INSIGHTFACE_SPEC"
    "$PY" -c 'import insightface.app, onnxruntime; print("  insightface", insightface.__version__)'
    "$PY" -m pip check || echo "  (pip check: the host's own pins disagree; kept as the host has them)"
    touch "$VENV/.instantid-live-ready"
else
    echo "  kept $VENV"
fi
# Only for writing the models, in a side folder on PYTHONPATH (not the server's environment):
# diffusers (IdentityNet), and the open_clip and pytorch_lightning that generative-models' SDXL
# definitions import (Forge Classic pins open-clip-torch 1.3.0, which has no ViT-bigG-14).
# One list for both hosts: these only write the models.
TOOLS=$TARGET/tools-site
if [[ ! -f $TOOLS/.instantid-live-ready ]]; then
    "$PY" -m pip install -q --no-deps --target "$TOOLS" "$DIFFUSERS_SPEC" importlib_metadata zipp \
        open_clip_torch==2.20.0 pytorch_lightning==2.5.1 ftfy regex sentencepiece
    touch "$TOOLS/.instantid-live-ready"
fi

# ---------------------------------------------------------------------------------------------
say "3/5 extensions"
install_extensions "$FORGE/extensions"

# ---------------------------------------------------------------------------------------------
say "4/5 models, tokenizer cache and settings"
export HF_HOME=$TARGET/hf-home
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# The model configs, laid out as webui_bed.py reads them: generative-models' SDXL configs and the
# host's own v1-inference.yaml (the same model as the WebUI's). reForge has the WebUI's layout.
CONFIGS=$FORGE
if [[ $HOST == classic ]]; then
    CONFIGS=$SRC/model-configs
    mkdir -p "$CONFIGS/repositories"
    ln -sfn "$SGM_SRC" "$CONFIGS/repositories/generative-models"
    ln -sfn "$FORGE/configs" "$CONFIGS/configs"
fi
BED=(env "PYTHONPATH=$REPO:$TOOLS:$SGM_SRC:$LDM_SRC" "$PY" "$HERE/webui_bed.py")
if [[ -n ${INSTANTID_LIVE_MODELS_FROM:-} ]]; then
    for rel in Stable-diffusion/sdxl-base-random.safetensors Stable-diffusion/sdxl-refiner-random.safetensors \
        Stable-diffusion/sd15-random.safetensors instantid/ip-adapter_sd15.bin \
        instantid/ControlNetModel/diffusion_pytorch_model.safetensors \
        ControlNet/controlnet-sdxl-canny-random.safetensors ControlNet/controlnet-sdxl-mid-random.safetensors \
        Lora/instantid-live-attn2.safetensors instantid/ip-adapter.bin; do
        from=$INSTANTID_LIVE_MODELS_FROM/$rel to=$FORGE/models/$rel
        # ip-adapter.bin only in torch's zip format (a Forge bed's), not the A1111 bed's legacy one.
        if [[ $rel == instantid/ip-adapter.bin ]] && ! "$PY" -c 'import sys, zipfile; sys.exit(not zipfile.is_zipfile(sys.argv[1]))' "$from" 2>/dev/null; then
            continue
        fi
        if [[ -f $from && ! -e $to ]]; then
            mkdir -p "$(dirname "$to")"
            ln "$from" "$to" 2>/dev/null || cp "$from" "$to"
            echo "  $to from $from"
        fi
    done
fi
"${BED[@]}" hf-cache "$HF_HOME"
"${BED[@]}" models "$FORGE" --seed "$SEED" --configs "$CONFIGS" --host forge
"${BED[@]}" webui-config "$FORGE"

# ---------------------------------------------------------------------------------------------
say "5/5 run.sh and wait.sh in $TARGET"
write_scripts "$HOST_NAME" "$FORGE" "--skip-python-version-check --skip-version-check --always-cpu"
say "ready. Start: $TARGET/run.sh   wait: $TARGET/wait.sh   (du: $(du -sh "$TARGET" | cut -f1))"
