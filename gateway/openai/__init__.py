"""An OpenAI-compatible HTTP API in front of the capability services.

Its own process (`python -m gateway.openai`): a Starlette app under uvicorn that turns
`/v1/chat/completions`, `/v1/embeddings`, `/v1/images/*`, `/v1/audio/*` and `/v1/models` into
calls of the generated gRPC stubs, one reused grpc.aio channel per capability. Envoy routes
`/v1/` on the edge's port here. docs/openai.md maps every field.
"""
