"""The omni capability: text, image and audio in; streamed text and speech out; live sessions;
reference voices (mmserve.omni.v1).

Run it with `python -m services.omni` (`--help` lists every setting);
`services.omni.capability.CAPABILITY` is what the runtime serves.
"""
