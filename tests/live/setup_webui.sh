#!/usr/bin/env bash
# Build a real AUTOMATIC1111 WebUI 1.10.1 + sd-webui-controlnet 1.1.455 with this extension, running
# on the CPU without network access at run time, for tests/live.
#
#   tests/live/setup_webui.sh [TARGET]          # default TARGET: /tmp/instantid-webui
#   TARGET/run.sh                               # start the server (port 7860; PORT=... to change)
#   TARGET/wait.sh                              # wait until /instantid/v1/version answers
#   SD_WEBUI_URL=http://127.0.0.1:7860 python -m pytest -q tests/live
#
# Every step is skipped when its result exists, so re-running is cheap. What it does:
#  1. clones the WebUI, ControlNet and the repositories the WebUI pins (launch_utils.py) at fixed
#     commits into TARGET/stable-diffusion-webui;
#  2. makes TARGET/venv with the WebUI's pinned packages, ControlNet's, insightface and onnxruntime;
#  3. links this checkout as extensions/sd-webui-instantid (INSTANTID_LIVE_EXT_MODE=copy copies it),
#     and the live suite's helper extensions tests/live/painter and tests/live/probe (if present) as
#     instantid-live-painter and instantid-live-probe;
#  4. writes random-weight models with the real architectures (tests/live/webui_bed.py), a local
#     Hugging Face cache for CLIP-L's tokenizer and the WebUI settings;
#  5. writes TARGET/run.sh and TARGET/wait.sh.
#
# Sources: GitHub by default. INSTANTID_LIVE_GIT_URL is a template for every repository's URL, with
# {owner} and {name} replaced (e.g. '/srv/mirrors/{owner}+{name}.git'); WEBUI_REPO, CONTROLNET_REPO,
# ASSETS_REPO, STABLE_DIFFUSION_REPO, STABLE_DIFFUSION_XL_REPO, K_DIFFUSION_REPO, BLIP_REPO and
# CLIP_REPO replace single URLs (the WebUI's own variable names, CLIP_REPO apart).
# Other settings (environment variables), all optional:
#   PYTHON                    a Python 3.10/3.11 (default: python3.11, else python3.10, else python3)
#   INSTANTID_LIVE_TORCH      pip arguments for torch and torchvision (default 'torch==2.14.1
#                             torchvision==0.29.1': PyPI's builds, which run on the CPU too). The two
#                             must be built for each other: a CPU torch (e.g. torch==2.13.0+cpu) needs a
#                             CPU torchvision, e.g. 'torch==2.13.0 torchvision==0.28.0 --index-url
#                             https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple';
#                             PyPI's torchvision is a CUDA build that does not load next to a CPU torch,
#                             and the script stops with a sentence saying so.
#   INSTANTID_LIVE_DIFFUSERS  pip spec of the diffusers used to write the IdentityNet files (not
#                             installed into the WebUI's environment; default diffusers==0.31.0)
#   INSTANTID_LIVE_SEED       seed of the random-weight models (default 1234)
#   INSTANTID_LIVE_EXT_MODE   'link' (default) or 'copy': how this checkout goes into extensions/
#   INSTANTID_LIVE_NEIGHBOURS '1' (default): the extensions a real user runs beside InstantID —
#                             ADetailer (Bing-su/adetailer, ADETAILER_REPO replaces its URL) with
#                             mediapipe's face detector; '0' leaves them out. The models step also
#                             writes a LoRA (models/Lora) and a small ordinary SDXL ControlNet.
# The WebUI pins setuptools==69.5.1; torch 2.13 and newer need setuptools>=77, so when pip reports
# that conflict the pin is relaxed to 'setuptools>=69.5.1,<81' (81 drops pkg_resources, which
# the WebUI's dependencies import). Stop the server with Ctrl+C or by killing the run.sh process.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TARGET=${1:-${INSTANTID_LIVE_DIR:-/tmp/instantid-webui}}
mkdir -p "$TARGET"
TARGET=$(cd "$TARGET" && pwd)
WEBUI=$TARGET/stable-diffusion-webui
VENV=$TARGET/venv
SEED=${INSTANTID_LIVE_SEED:-1234}
GITHUB_TEMPLATE='https://github.com/{owner}/{name}.git'
URL_TEMPLATE=${INSTANTID_LIVE_GIT_URL:-$GITHUB_TEMPLATE}
# torch and torchvision must come as a pair built for each other (see INSTANTID_LIVE_TORCH above).
TORCH_SPEC=${INSTANTID_LIVE_TORCH:-torch==2.14.1 torchvision==0.29.1}
DIFFUSERS_SPEC=${INSTANTID_LIVE_DIFFUSERS:-diffusers==0.31.0}
NEIGHBOURS=${INSTANTID_LIVE_NEIGHBOURS:-1}
if [[ -z ${PYTHON:-} ]]; then
    PYTHON=$(command -v python3.11 || command -v python3.10 || command -v python3)
fi

say() { printf '\n[setup_webui] %s\n' "$*"; }

# url_for, checkout, webui_repositories, openai_clip, make_venv, check_torch_pair, install_extensions,
# write_scripts
# shellcheck source=tests/live/bed_lib.sh
source "$HERE/bed_lib.sh"

# ---------------------------------------------------------------------------------------------
say "1/5 sources in $WEBUI"
checkout "$(url_for AUTOMATIC1111/stable-diffusion-webui "${WEBUI_REPO:-}")" \
    82a973c04367123ae98bd9abdf80d9eda9b910e2 "$WEBUI" v1.10.1
webui_repositories "$WEBUI"
checkout "$(url_for Mikubill/sd-webui-controlnet "${CONTROLNET_REPO:-}")" \
    56cec5b2958edf3b1807b7e7b2b1b5186dbd2f81 "$WEBUI/extensions/sd-webui-controlnet" 1.1.455
# A real user's neighbours (INSTANTID_LIVE_NEIGHBOURS=0 leaves them out): ADetailer 25.3.0.
if [[ $NEIGHBOURS == 1 ]]; then
    checkout "$(url_for Bing-su/adetailer "${ADETAILER_REPO:-}")" \
        36189cbea735b85fd01e98ac42002b8ce6f0e41d "$WEBUI/extensions/adetailer"
elif [[ -e $WEBUI/extensions/adetailer ]]; then
    rm -rf "$WEBUI/extensions/adetailer"
    echo "  removed $WEBUI/extensions/adetailer"
fi
# The WebUI pip-installs OpenAI's CLIP (k-diffusion imports it) from a GitHub archive of this commit.
openai_clip "$TARGET/src/CLIP"

# ---------------------------------------------------------------------------------------------
say "2/5 Python environment in $VENV"
make_venv
if [[ ! -f $VENV/.instantid-live-ready ]]; then
    REQ=$TARGET/requirements-live.txt
    {
        echo "# The WebUI's requirements_versions.txt (torch apart), then what ControlNet and InstantID need."
        # protobuf: the WebUI pins 3.20.0, but onnx (insightface) needs >= 3.20.2; open-clip needs < 4.
        grep -v -E '^torch$' "$WEBUI/requirements_versions.txt" | sed 's/^protobuf==3\.20\.0/protobuf==3.20.3/'
        # sd-webui-controlnet's requirements.txt as its install.py resolves it, less mediapipe
        # (only its mediapipe_face preprocessor imports it).
        echo "fvcore"
        echo "svglib==1.5.1"  # newer svglib builds pycairo from source
        echo "addict"
        echo "yapf"
        echo "albumentations==1.4.3"
        echo "matplotlib"
        echo "timm==0.9.5"
        echo "pydantic==1.10.17"
        echo "controlnet_aux==0.0.10"  # 0.0.9 wants timm<=0.6.7
        echo "opencv-python-headless"
        # InstantID (requirements.txt of this repository) and its face pack's format.
        echo "insightface"
        echo "onnxruntime"
        echo "onnx"
        echo "wheel"  # builds OpenAI CLIP below without fetching build tools
    } >"$REQ"
    PIPLOG=$TARGET/pip-install.log
    # shellcheck disable=SC2086  # TORCH_SPEC is a list of pip arguments
    if ! "$PY" -m pip install -q $TORCH_SPEC -r "$REQ" 2>"$PIPLOG"; then
        if grep -q 'setuptools' "$PIPLOG" && grep -q -E '^setuptools==' "$REQ"; then
            echo "  the chosen torch needs a newer setuptools than the WebUI's pin: relaxing it"
            sed -i -E 's/^setuptools==[^ ]*(.*)$/setuptools>=69.5.1,<81  # relaxed for torch/' "$REQ"
            # shellcheck disable=SC2086
            "$PY" -m pip install -q $TORCH_SPEC -r "$REQ"
        else
            cat "$PIPLOG" >&2
            exit 1
        fi
    fi
    check_torch_pair
    "$PY" -m pip install -q --no-deps --no-build-isolation "$TARGET/src/CLIP"
    "$PY" -m pip check
    touch "$VENV/.instantid-live-ready"
else
    echo "  kept $VENV"
fi
if [[ $NEIGHBOURS == 1 && ! -f $VENV/.instantid-live-neighbours ]]; then
    # ADetailer's install.py asks for ultralytics, mediapipe 0.10.13-0.10.15 and rich. The bed
    # takes mediapipe (its built-in face detectors) without its opencv-contrib-python (a second
    # OpenCV build next to the headless one, which would also need libGL) and jax (its face
    # solutions do not import it); ultralytics' YOLO detectors need downloaded weights: left out.
    "$PY" -m pip install -q --no-deps "mediapipe==0.10.14"
    "$PY" -m pip install -q absl-py "attrs>=19.1.0" "flatbuffers>=2.0" "protobuf>=4.25.3,<5" \
        "sounddevice>=0.4.4" "rich>=13"
    "$PY" -c 'import mediapipe as mp; mp.solutions.face_detection.FaceDetection(model_selection=1).close()'
    touch "$VENV/.instantid-live-neighbours"
fi
# diffusers only writes the ControlNet files; it goes to a side folder, not into the WebUI's venv.
TOOLS=$TARGET/tools-site
if [[ ! -d $TOOLS/diffusers ]]; then
    "$PY" -m pip install -q --no-deps --target "$TOOLS" "$DIFFUSERS_SPEC" importlib_metadata zipp
fi

# ---------------------------------------------------------------------------------------------
say "3/5 extensions"
install_extensions "$WEBUI/extensions"

# ---------------------------------------------------------------------------------------------
say "4/5 models, tokenizer cache and settings"
export HF_HOME=$TARGET/hf-home
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
REPOS=$WEBUI/repositories
BED=(env "PYTHONPATH=$REPO:$TOOLS:$REPOS/generative-models:$REPOS/stable-diffusion-stability-ai"
    "$PY" "$HERE/webui_bed.py")
"${BED[@]}" hf-cache "$HF_HOME"
"${BED[@]}" models "$WEBUI" --seed "$SEED"
"${BED[@]}" webui-config "$WEBUI"

# ---------------------------------------------------------------------------------------------
say "5/5 run.sh and wait.sh in $TARGET"
# ADetailer looks its detectors up on Hugging Face at start unless told not to.
EXTRA_ARGS=
if [[ $NEIGHBOURS == 1 ]]; then
    EXTRA_ARGS=" --ad-no-huggingface"
fi
write_scripts "the WebUI" "$WEBUI" "--skip-version-check --use-cpu all --no-half --no-half-vae --precision full --do-not-download-clip$EXTRA_ARGS"
say "ready. Start: $TARGET/run.sh   wait: $TARGET/wait.sh   (du: $(du -sh "$TARGET" | cut -f1))"
