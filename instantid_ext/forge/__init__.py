"""The Forge family's backend (Forge Classic, reForge), reached through its own API.

These hosts are AUTOMATIC1111 forks: the script hooks, the panel, the API and infotext are
the same as in :mod:`instantid_ext.webui`, which drives them. What differs is below the
script: the UNet is patched through the host's UNet patcher (a clone per sampling pass, with
attn2 *replace* patches) instead of module hooks, and IdentityNet runs as a ControlNet of the
host's own backend instead of an sd-webui-controlnet unit. This package holds that part:
:mod:`.backend` (the host's classes and functions, IdentityNet's loading, one sampling pass's
patched UNet) and :mod:`.identitynet` (IdentityNet with the face tokens as its own context).
"""
