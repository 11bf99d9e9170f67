"""AvatarIngress: the HTTP routes of docs/protocol.md. Each route is a line or two; the logic is in serving.py.

No `from __future__ import annotations` here: FastAPI must see the real `Request` annotation.
"""

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles

from deployments.auth import AuthOptions, install
from deployments.docs import serve_docs
from deployments.errors import ServiceError, error_response
from deployments.framing import NdjsonFraming, SseFraming
from deployments.options import StreamOptions
from deployments.profiles import ProfileRouter, ServedProfile
from deployments.serving import AvatarService
from model.config import GenerationDefaults
from model.request import RequestLimits, request_schema
from model.responses import openapi_responses

STATIC_DIR = Path(__file__).with_name("static")
BODY_SCHEMA = request_schema(RequestLimits(), GenerationDefaults())  # made this deployment's limits and defaults in __init__
GENERATE_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": BODY_SCHEMA}}}}

app = FastAPI(
    title="OmniAvatar streaming service",
    summary="Talking-avatar video from a face image, speech and a prompt, streamed segment by segment.",
    version="0.1.0",
    docs_url=None,
    redoc_url=None,
)
app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
serve_docs(app)


@app.exception_handler(HTTPException)
async def _http_error(_: Request, error: HTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return error_response(ServiceError(error.status_code, code, str(error.detail)))


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0] if error.errors() else {"msg": "invalid request", "loc": ()}
    field = ".".join(str(part) for part in first.get("loc", ())) or None
    return error_response(ServiceError(422, "invalid_request", first["msg"], field))


@serve.deployment(name="AvatarIngress", ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class AvatarIngress:
    def __init__(
        self,
        store: DeploymentHandle,
        profiles: tuple[ServedProfile, ...],
        limits: RequestLimits,
        options: StreamOptions,
        auth: AuthOptions | None = None,
    ) -> None:
        """`profiles`: each profile's generator and model config, the default first; `store` runs the requests."""
        auth = auth or AuthOptions()
        install(app, auth)  # middleware, before Serve starts the app
        router = ProfileRouter(profiles, options.health_timeout_s)
        self.service = AvatarService(router, store, limits, options, auth.enabled)
        default = router.default.config
        BODY_SCHEMA.clear()  # FastAPI builds /openapi.json on its first call, from this same dict
        BODY_SCHEMA.update(request_schema(limits, default.generation, default.planning.fps, router.names))

    @app.get("/", include_in_schema=False)
    async def page(self) -> Response:
        """The web page that plays the video while it is generated."""
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/health")
    async def health(self) -> Response:
        """Service state from Serve's view of the generators: 200 when one can generate, 503 JSON otherwise."""
        return await self.service.health()

    @app.post("/generate-stream", openapi_extra=GENERATE_BODY, responses=openapi_responses("text/event-stream"))
    async def generate_stream(self, request: Request) -> Response:
        """Server-Sent Events: queued while waiting, start, progress, one segment event per MP4 segment, then complete or error."""
        return await self.service.stream(request, SseFraming(), route="sse")

    @app.post("/generate-stream-chunked", openapi_extra=GENERATE_BODY, responses=openapi_responses("application/x-ndjson"))
    async def generate_stream_chunked(self, request: Request) -> Response:
        """NDJSON: one JSON object per line with the same information as the SSE events."""
        return await self.service.stream(request, NdjsonFraming(), route="ndjson")

    @app.post("/generate", openapi_extra=GENERATE_BODY, responses=openapi_responses(None))
    async def generate(self, request: Request) -> Response:
        """The whole video as one MP4 (base64 in JSON), once every segment is done."""
        return await self.service.whole_video(request)

    @app.get("/streams/{request_id}", responses=openapi_responses("text/event-stream"))
    async def resume_stream(self, request_id: str, request: Request, format: str = "sse") -> Response:
        """An earlier request's stream after `Last-Event-ID` or `?after=<seq>`: what was missed, then live.
        `?format=ndjson` gives NDJSON lines."""
        if format == "ndjson":
            return await self.service.resume(request, request_id, NdjsonFraming(), route="ndjson")
        return await self.service.resume(request, request_id, SseFraming(), route="sse")

    @app.delete("/streams/{request_id}")
    async def cancel_stream(self, request_id: str, request: Request) -> Response:
        """Stop a request now (within one denoising step); answers its state."""
        return await self.service.cancel(request, request_id)

    @app.post("/jobs", status_code=202, openapi_extra=GENERATE_BODY)
    async def submit_job(self, request: Request) -> Response:
        """202 with the request id and the URLs of its stream, status and video; it runs whoever is connected."""
        return await self.service.submit_job(request)

    @app.get("/jobs/{request_id}")
    async def job_status(self, request_id: str, request: Request) -> Response:
        """A request's state, progress and estimated seconds left."""
        return await self.service.job_status(request, request_id)

    @app.get("/videos/{request_id}")
    async def video(self, request_id: str, request: Request) -> Response:
        """A completed request's whole MP4 (`video/mp4`, Range requests served)."""
        return await self.service.video(request, request_id)
