"""The InstantID method itself, free of any host: the Resampler and IP-Adapter, the attention
patch, keypoints and their geometry, the SDXL layer names, pose presets, and the regional
attention and IdentityNet math for several people. Imports only :mod:`instantid_ext.errors`,
:mod:`instantid_ext.images` and :mod:`instantid_ext.models`."""
