"""Command-line clients of the service: `avatar-stream` (streaming_client.py: segments saved as they arrive) and
`avatar-generate` (client.py: the whole video from /generate). They speak HTTP only (httpx) and use PyAV
to join segments; they never import model/, deployments/ or Ray."""
