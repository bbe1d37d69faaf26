"""The HTTP API (FastAPI): thin handlers over JobManager and ModelManager.

Routes are exactly protocol.ENDPOINTS. Every error answers {"detail": "<what
to fix>"} with a 4xx status; refused inputs are checked completely in memory
before a job folder exists, so nothing is written for them.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, AsyncIterator

from fastapi import APIRouter, FastAPI, File, Form, Request, UploadFile
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi import Path as FastApiPath
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..protocol import API_PREFIX, MAX_INSTANCES, MAX_UPLOAD_BYTES, PROTOCOL_VERSION, HealthInfo, JobStatus
from .auth import AccessMiddleware, AccessPolicy, send_json
from .inputs import InputError, parse_submission
from .jobs import JobConflict, JobManager
from ..loading import ModelLoadError
from .model_manager import ModelManager, UnknownModel
from .storage import DEFAULT_KEEP_JOBS, JOB_ID_PATTERN, RESULT_GLB, RESULT_JSON, JobStore, UnknownJob


class ErrorDetail(BaseModel):
    """The body of every error answer."""

    detail: str = Field(description="what was wrong and what to do about it")


_ERROR_TEXT = {
    400: "refused: the message says what to fix (a bad upload or setting, or a repeated Host/Origin/Authorization header)",
    401: "missing or wrong access token",
    403: "the Host or Origin header does not name this service",
    404: "no such job or model",
    409: "the job is not in a state that allows this (e.g. the result of a job that has not succeeded)",
    413: f"the request body is over {MAX_UPLOAD_BYTES // 2**20} MiB",
    422: "a required field is missing, has the wrong type, or a job id is malformed",
}
# Every request passes the access and size checks first: these answers are possible on every route.
_ALWAYS = (400, 401, 403, 413)


def errors(*codes: int) -> dict[int | str, dict]:
    """OpenAPI `responses` entries for these error statuses (plus the ones every route can give)."""
    return {code: {"model": ErrorDetail, "description": _ERROR_TEXT[code]} for code in sorted({*_ALWAYS, *codes})}


JobId = Annotated[str, FastApiPath(pattern=JOB_ID_PATTERN.pattern, description="32 lowercase hex characters")]


class LoadModelRequest(BaseModel):
    model: str = Field(min_length=1, max_length=512,
                       description="'default', a model folder on the service's machine, or a hub repo id")


class BodyLimitMiddleware:
    """Refuse request bodies over `limit` bytes (declared or streamed) before the app sees them.

    The body is buffered in memory (at most `limit` bytes), so an oversized
    upload is refused without a byte reaching the disk.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"upload too large: at most {self.limit // 2**20} MiB per request; send a smaller image or seg map"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await send_json(send, 413, {"detail": too_large})
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await send_json(send, 413, {"detail": too_large})
                return
            if not message.get("more_body", False):
                break
        replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay_receive() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replay_receive, send)


def create_app(data_dir: Path, models: ModelManager, policy: AccessPolicy, keep_jobs: int = DEFAULT_KEEP_JOBS) -> FastAPI:
    """The service app; the worker thread runs between the app's startup and shutdown."""
    store = JobStore(data_dir)
    jobs = JobManager(store, models, keep_jobs)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        jobs.start()
        yield
        await run_in_threadpool(jobs.stop)

    app = FastAPI(
        title="scenewright service", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Local generation service of scenewright. Every request needs 'Authorization: Bearer <token>'.",
    )
    router = APIRouter(prefix=API_PREFIX)

    def health() -> HealthInfo:
        return HealthInfo(status="ok", protocol_version=PROTOCOL_VERSION, version=__version__,
                          model=models.loaded, device=models.device, memory=models.memory())

    @router.get("/health", response_model=HealthInfo, responses=errors())
    def get_health() -> HealthInfo:
        return health()

    @router.get("/models", responses=errors())
    def list_models() -> dict:
        return models.listing()

    @router.post("/models/load", response_model=HealthInfo, responses=errors(404, 422))
    def load_model(body: LoadModelRequest) -> HealthInfo:
        models.pipeline(models.register(body.model))
        return health()

    @router.post("/models/unload", response_model=HealthInfo, responses=errors())
    def unload_model() -> HealthInfo:
        models.unload()
        return health()

    @router.post("/jobs", status_code=202, response_model=JobStatus, responses=errors(404, 422),
                 description="Send the image and exactly one of `seg` (a seg map) or `masks` (one file per instance). "
                             "Images are checked by decoding them: bytes that are no image are refused with 400.")
    async def submit_job(
        image: Annotated[UploadFile, File(description="the reference image (PNG or any common format)")],
        seg: Annotated[UploadFile | None, File(description="seg map (MIDI): each non-black gray is one instance")] = None,
        masks: Annotated[list[UploadFile] | None, File(description="one mask per instance (white = the object), or seg")] = None,
        settings: Annotated[str, Form(description="GenerationSettings as JSON text, e.g. {\"steps\": 30, \"seed\": 1}")] = "",
    ) -> JobStatus:
        image_bytes = await image.read()
        seg_bytes = None if seg is None else await seg.read()
        mask_bytes = [await m.read() for m in masks or []]
        submission = await run_in_threadpool(parse_submission, image_bytes, seg_bytes, mask_bytes, settings)
        if submission.settings.model is not None and not models.is_known(submission.settings.model):
            known = sorted(m["id"] for m in models.listing()["models"])
            raise InputError(f"unknown model {submission.settings.model!r}; known models: {known}. "
                             "Load another one first with POST /v1/models/load")
        return await run_in_threadpool(jobs.submit, submission)

    @router.get("/jobs", responses=errors())
    def list_jobs() -> dict:
        return {"jobs": [s.to_dict() for s in jobs.list()]}

    @router.get("/jobs/{job_id}", response_model=JobStatus, responses=errors(404, 422))
    def get_job(job_id: JobId) -> JobStatus:
        return jobs.get(job_id)

    @router.post("/jobs/{job_id}/cancel", response_model=JobStatus, responses=errors(404, 409, 422))
    def cancel_job(job_id: JobId) -> JobStatus:
        return jobs.cancel(job_id)

    @router.get("/jobs/{job_id}/result.glb", response_class=FileResponse, responses={
        **errors(404, 409, 422), 200: {"content": {"model/gltf-binary": {"schema": {"type": "string", "format": "binary"}}},
                                       "description": "the scene: one node per instance"}})
    def result_glb(job_id: JobId) -> FileResponse:
        return FileResponse(jobs.result_path(job_id, RESULT_GLB), media_type="model/gltf-binary", filename=f"{job_id}.glb")

    @router.get("/jobs/{job_id}/result.json", response_class=FileResponse, responses={
        **errors(404, 409, 422), 200: {"content": {"application/json": {"schema": {"type": "object"}}},
                                       "description": "the result manifest (protocol.ResultManifest)"}})
    def result_json(job_id: JobId) -> FileResponse:
        return FileResponse(jobs.result_path(job_id, RESULT_JSON), media_type="application/json")

    app.include_router(router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    _add_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, limit=MAX_UPLOAD_BYTES)
    app.add_middleware(AccessMiddleware, policy=policy)  # added last = runs first
    return app


def _openapi(app: FastAPI) -> dict:
    """FastAPI's description, with the job submission stated as the service checks it: an image and exactly
    one of a seg map or 1..MAX_INSTANCES masks, all files (FastAPI's own schema allows nulls and neither)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = schema["components"]["schemas"]
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    body = next(name for name in schemas if name.startswith("Body_submit_job"))
    binary = {"type": "string", "format": "binary"}
    schemas[body] = {
        "type": "object", "title": body, "required": ["image"],
        "properties": {
            "image": {**binary, "description": "the reference image (PNG or any common format)"},
            "seg": {**binary, "description": "seg map (MIDI convention): black background, one gray value per instance"},
            "masks": {"type": "array", "items": binary, "minItems": 1, "maxItems": MAX_INSTANCES,
                      "description": "one mask per instance, white = the object"},
            "settings": {"type": "string", "description": "GenerationSettings as JSON text, e.g. {\"steps\": 30}"},
        },
        "oneOf": [{"required": ["seg"]}, {"required": ["masks"]}],  # exactly one of the two
    }
    app.openapi_schema = schema
    return schema


def _add_error_handlers(app: FastAPI) -> None:
    def detail(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(InputError)
    async def input_error(_: Request, exc: InputError) -> JSONResponse:
        return detail(400, str(exc))

    @app.exception_handler(UnknownJob)
    async def unknown_job(_: Request, exc: UnknownJob) -> JSONResponse:
        return detail(404, f"no job with id {exc.args[0]!r} (ids are 32 lowercase hex characters, see GET {API_PREFIX}/jobs)")

    @app.exception_handler(JobConflict)
    async def conflict(_: Request, exc: JobConflict) -> JSONResponse:
        return detail(409, str(exc))

    @app.exception_handler(UnknownModel)
    async def unknown_model(_: Request, exc: UnknownModel) -> JSONResponse:
        return detail(404, str(exc))

    @app.exception_handler(ModelLoadError)
    async def model_load_error(_: Request, exc: ModelLoadError) -> JSONResponse:
        return detail(422, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own answers (unknown route, wrong method) in our shape; a 405 lists every method of the path."""
        if exc.status_code != 405:
            return detail(exc.status_code, str(exc.detail))
        path = request.url.path
        methods = sorted({m for route in app.routes if isinstance(route, APIRoute) and route.path_regex.match(path)
                          for m in route.methods})
        response = detail(405, f"method {request.method} is not allowed here; use {' or '.join(methods)}")
        response.headers["Allow"] = ", ".join(methods)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in exc.errors())
        return detail(422, f"invalid request: {problems}")
