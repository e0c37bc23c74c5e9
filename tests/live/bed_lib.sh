# Shared by the live test-bed builders (setup_webui.sh, setup_forge.sh); sourced, not run.
# The caller sets URL_TEMPLATE (a git URL with {owner} and {name}), REPO (this checkout), TARGET,
# VENV and PYTHON (PY: see make_venv) before calling these.

url_for() {  # url_for OWNER/NAME [OVERRIDE]
    if [[ -n ${2:-} ]]; then
        printf '%s' "$2"
        return
    fi
    local owner=${1%%/*} name=${1#*/} url=$URL_TEMPLATE
    url=${url//\{owner\}/$owner}
    url=${url//\{name\}/$name}
    printf '%s' "$url"
}

checkout() {  # checkout URL COMMIT DEST [TAG]
    local url=$1 commit=$2 dest=$3 tag=${4:-}
    if [[ -d $dest/.git ]] && [[ $(git -C "$dest" rev-parse HEAD 2>/dev/null) == "$commit" ]]; then
        echo "  kept $dest at ${commit:0:8}"
    else
        rm -rf "$dest"
        mkdir -p "$(dirname "$dest")"
        echo "  $url @ ${commit:0:8} -> $dest"
        # A shallow fetch of one commit is quick on GitHub; some servers refuse it: then clone all.
        if ! { git init -q "$dest" && git -C "$dest" fetch -q --depth 1 "$url" "$commit" 2>/dev/null &&
            git -C "$dest" checkout -q FETCH_HEAD; }; then
            rm -rf "$dest"
            git clone -q --no-checkout "$url" "$dest"
            # Mirrors without some large binary assets (pictures) still check out the code.
            git -C "$dest" checkout -q "$commit" || true
        fi
        if [[ $(git -C "$dest" rev-parse HEAD) != "$commit" ]]; then
            echo "could not check out $commit from $url" >&2
            exit 1
        fi
    fi
    # The host reads each extension's remote and branch, and the WebUI its own version from the tag.
    git -C "$dest" remote get-url origin >/dev/null 2>&1 || git -C "$dest" remote add origin "$url"
    git -C "$dest" symbolic-ref -q HEAD >/dev/null || git -C "$dest" checkout -q -B pinned
    if [[ -n $tag ]]; then
        git -C "$dest" tag -f "$tag" "$commit" >/dev/null
    fi
}

# webui_repositories DIR: the repositories the WebUI 1.10.1 clones at launch
# (modules/launch_utils.py prepare_environment), at its commits, into DIR/repositories. reForge
# clones the same ones; its stablediffusion comes from a fork (joypaul162/Stability-AI-
# stablediffusion f16630a9) made when Stability-AI's repository went away, and
# STABLE_DIFFUSION_REPO with STABLE_DIFFUSION_COMMIT can name it; ldm is only read for its
# SD1 model definitions there.
webui_repositories() {
    local dir=$1/repositories
    checkout "$(url_for AUTOMATIC1111/stable-diffusion-webui-assets "${ASSETS_REPO:-}")" \
        6f7db241d2f8ba7457bac5ca9753331f0c266917 "$dir/stable-diffusion-webui-assets"
    checkout "$(url_for Stability-AI/stablediffusion "${STABLE_DIFFUSION_REPO:-}")" \
        "${STABLE_DIFFUSION_COMMIT:-cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf}" "$dir/stable-diffusion-stability-ai"
    checkout "$(url_for Stability-AI/generative-models "${STABLE_DIFFUSION_XL_REPO:-}")" \
        45c443b316737a4ab6e40413d7794a7f5657c19f "$dir/generative-models"
    checkout "$(url_for crowsonkb/k-diffusion "${K_DIFFUSION_REPO:-}")" \
        ab527a9a6d347f364e3d185ba6d714e22d80cb3c "$dir/k-diffusion"
    checkout "$(url_for salesforce/BLIP "${BLIP_REPO:-}")" \
        48211a1594f1321b00f14c9f7a5b4813144b2fb9 "$dir/BLIP"
}

# openai_clip DEST: OpenAI's CLIP at the commit the WebUI, Forge Classic and reForge pip-install
# from a GitHub archive (k-diffusion imports it).
openai_clip() {
    checkout "$(url_for openai/CLIP "${CLIP_REPO:-}")" d50d76daa670286dd6cacf3bcd80b5e4823fc8e1 "$1"
}

# make_venv: VENV made with PYTHON unless it exists; sets PY to its Python.
make_venv() {
    if [[ ! -x $VENV/bin/python ]]; then
        "$PYTHON" -m venv "$VENV"
    fi
    PY=$VENV/bin/python
}

# check_torch_pair: torch and torchvision of the venv load together, else one sentence and exit.
check_torch_pair() {
    local out
    if ! out=$("$PY" -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__)' 2>&1); then
        echo "torch and torchvision in $VENV do not load together:" >&2
        echo "$out" | tail -n 1 >&2
        echo "This happens with a CPU build of torch next to PyPI's torchvision (a CUDA build). Pick a" \
            "matching pair with INSTANTID_LIVE_TORCH (see this script's header), delete $VENV and run" \
            "the script again." >&2
        exit 1
    fi
    echo "  torch and torchvision: $out"
}

# install_ext SOURCE DEST: this checkout (or a folder of it) as the extension folder DEST, linked,
# or copied with INSTANTID_LIVE_EXT_MODE=copy.
install_ext() {
    local src=$1 dest=$2
    if [[ ${INSTANTID_LIVE_EXT_MODE:-link} == copy ]]; then
        rm -rf "$dest"
        mkdir -p "$dest"
        git -C "$src" ls-files -z . | (cd "$src" && xargs -0 cp --parents -t "$dest")
        echo "  copied $src -> $dest"
    else
        if [[ -e $dest && ! -L $dest ]]; then
            rm -rf "$dest"
        fi
        ln -sfn "$src" "$dest"
        echo "  linked $dest -> $src"
    fi
}

# install_extensions EXTENSIONS_DIR: this checkout as sd-webui-instantid, and the live suite's
# test-bed-only helper extensions when this checkout has them. Their folder names sort before the
# others, so their scripts run first: the painter (outputs replaced by a given picture) and the
# probe (InstantID's face attention checked against its unfolded formula).
install_extensions() {
    local dir=$1 helper
    install_ext "$REPO" "$dir/sd-webui-instantid"
    for helper in painter probe; do
        if [[ -d $REPO/tests/live/$helper ]]; then
            install_ext "$REPO/tests/live/$helper" "$dir/instantid-live-$helper"
        fi
    done
}

# write_scripts HOST_NAME HOST_DIR LAUNCH_ARGS: TARGET/run.sh, which starts the host on the CPU,
# offline, with the API (PORT, default 7860; extra arguments go to the host, e.g. --api-auth
# user:pass), and TARGET/wait.sh, which waits until it answers /instantid/v1/version.
write_scripts() {
    local name=$1 dir=$2 launch_args=$3
    cat >"$TARGET/run.sh" <<RUNSH
#!/usr/bin/env bash
# Start $name on the CPU, offline, with the API (PORT, default 7860). Extra arguments are
# passed to it (e.g. --api-auth user:pass).
set -euo pipefail
cd "$dir"
export HF_HOME="$HF_HOME" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export GRADIO_ANALYTICS_ENABLED=False DO_NOT_TRACK=1 DISABLE_TELEMETRY=1
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST= CUDA_VISIBLE_DEVICES=
# glibc serves large tensors from its heap once its mmap threshold has grown, and keeps what is
# freed: after a checkpoint switch the process then holds several GB it does not use. A fixed
# threshold keeps large blocks in mmap, returned on free (the WebUI's webui.sh preloads tcmalloc
# for the same reason).
export MALLOC_MMAP_THRESHOLD_=\${MALLOC_MMAP_THRESHOLD_:-131072}
exec "$PY" launch.py --skip-prepare-environment --skip-install --skip-torch-cuda-test \\
    $launch_args \\
    --api --port "\${PORT:-7860}" --server-name 127.0.0.1 --no-download-sd-model "\$@"
RUNSH
    cat >"$TARGET/wait.sh" <<'WAITSH'
#!/usr/bin/env bash
# Wait until the server answers /instantid/v1/version (TIMEOUT seconds, default 900).
url=${SD_WEBUI_URL:-http://127.0.0.1:${PORT:-7860}}
deadline=$((SECONDS + ${TIMEOUT:-900}))
until curl -sf "$url/instantid/v1/version" >/dev/null; do
    if ((SECONDS > deadline)); then
        echo "no answer from $url/instantid/v1/version" >&2
        exit 1
    fi
    sleep 5
done
curl -s "$url/instantid/v1/version"
echo
WAITSH
    chmod +x "$TARGET/run.sh" "$TARGET/wait.sh"
}
