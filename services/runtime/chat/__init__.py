"""The chat core every chat capability (vl, omni) shares, mirroring mmserve.common.v1
chat.proto: messages and their parts, sampling and its resolution, finish reasons, streamed
text, the chat settings, and the protobuf side of all of it.

`messages`, `sampling` and `decoding` are plain Python that engines use; `settings` holds the
chat limits every chat service configures; `protos` and `stream` translate to and from protobuf
and are for servicers only.
"""
