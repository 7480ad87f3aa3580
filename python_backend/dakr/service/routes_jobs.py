"""Jobs: start an adapt job, follow its progress and log, cancel and resume it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status

from dakr.config import flatten
from dakr.continual.strategies import get_strategy
from dakr.memory_budget import estimate_training_memory
from dakr.progress import read_events
from dakr.service.context import ServiceContext, get_context, job_or_404, public_message
from dakr.service.job_files import EVENTS_FILE, LOG_FILE, last_event, tail_lines
from dakr.service.schemas import MAX_INT, AdaptJobIn, ConflictOut, ErrorOut, EventsOut, JobCreatedOut, JobOut, LogOut
from dakr.service.security import safe_name
from dakr.stage_config import stage_config
from dakr.store import JobRecord, Store, StoreError

router = APIRouter(tags=["jobs"])
_NOT_FOUND = {404: {"model": ErrorOut, "description": "unknown job"}}
_CONFLICT = {409: {"model": ConflictOut, "description": "a training job is already running; job_id names it"}}


def job_out(store: Store, job: JobRecord) -> JobOut:
    """A job with its latest progress event; its error names the store without its absolute path."""
    event = last_event(store.job_dir(job.id) / EVENTS_FILE)
    return JobOut(
        id=job.id,
        kind=job.kind,
        state=job.state,
        params=job.params,
        progress=event,
        created=job.created,
        updated=job.updated,
        error=public_message(store, job.error) if job.error else None,
        result=job.result,
    )


@router.post(
    "/jobs",
    response_model=JobCreatedOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        400: {
            "model": ErrorOut,
            "description": "bad site, strategy or config, or settings that need more memory than the server allows",
        },
        **_CONFLICT,
    },
    summary="Start adapting the active model to a registered site",
)
def start_job(request: AdaptJobIn, context: ServiceContext = Depends(get_context)) -> JobCreatedOut:
    """Checks the site, strategy, config overrides and the memory they need before the worker starts.

    One training job runs at a time.
    """
    store = context.store
    safe_name(request.site, "site")
    overrides = flatten(request.config)
    try:
        site = store.site(request.site)
        get_strategy(request.strategy)
        config = stage_config(store.active_version(), overrides)
    except (StoreError, ValueError) as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    estimate = estimate_training_memory(config, max(len(store.label_names or {}), 2))
    if estimate.total > context.max_job_memory_bytes:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, estimate.explain(context.max_job_memory_bytes))
    if site.purged:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"site {site.name!r} was purged; register its data again under a new name"
        )
    params = {
        "site": site.name,
        "strategy": request.strategy,
        "config": overrides,
        "threads": request.threads,
        "activate": request.activate,
    }
    job = context.runner.submit("adapt", params)
    return JobCreatedOut(job_id=job.id)


@router.get("/jobs", response_model=list[JobOut], summary="All jobs, newest first")
def list_jobs(context: ServiceContext = Depends(get_context)) -> list[JobOut]:
    return [job_out(context.store, job) for job in context.store.jobs()]


@router.get("/jobs/{job_id}", response_model=JobOut, responses=_NOT_FOUND, summary="One job with its latest progress")
def get_job(job_id: str, context: ServiceContext = Depends(get_context)) -> JobOut:
    return job_out(context.store, job_or_404(context.store, job_id))


@router.get(
    "/jobs/{job_id}/events", response_model=EventsOut, responses=_NOT_FOUND, summary="Progress events from index `since` on"
)
def job_events(job_id: str, since: Annotated[int, Query(ge=0, le=MAX_INT)] = 0, context: ServiceContext = Depends(get_context)) -> EventsOut:
    job_or_404(context.store, job_id)
    events = read_events(context.store.job_dir(job_id) / EVENTS_FILE, since)
    return EventsOut(events=events, next=since + len(events))


@router.get("/jobs/{job_id}/log", response_model=LogOut, responses=_NOT_FOUND, summary="The last lines of the worker's log")
def job_log(
    job_id: str, lines: Annotated[int, Query(ge=1, le=10_000)] = 200, context: ServiceContext = Depends(get_context)
) -> LogOut:
    job_or_404(context.store, job_id)
    return LogOut(lines=tail_lines(context.store.job_dir(job_id) / LOG_FILE, lines))


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobOut,
    responses={**_NOT_FOUND, 409: {"model": ConflictOut, "description": "the job is not running; job_id names it"}},
    summary="Stop a job; training checkpoints first so it can be resumed",
)
def cancel_job(job_id: str, context: ServiceContext = Depends(get_context)) -> JobOut:
    job_or_404(context.store, job_id)
    return job_out(context.store, context.runner.cancel(job_id))


@router.post(
    "/jobs/{job_id}/resume",
    response_model=JobOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={**_NOT_FOUND, **_CONFLICT},
    summary="Continue an interrupted or cancelled job from its last checkpoint",
)
def resume_job(job_id: str, context: ServiceContext = Depends(get_context)) -> JobOut:
    job_or_404(context.store, job_id)
    return job_out(context.store, context.runner.resume(job_id))
