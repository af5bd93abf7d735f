"""A completed RunPod job becomes a stored, titled image: store, title, finalize.

The image is decoded and verified once, in the CPU lane (off the event loop), while it uploads;
its title is asked for as soon as it is proven, from its thumbnail, so the vision model's answer
and the upload overlap. After the upload no image bytes are kept: a job waiting for its title
holds a few KB, not the output.
"""

import asyncio
import logging
import uuid
from dataclasses import dataclass

from orchestrator.deps import FlowDeps
from orchestrator.errors import FencedOut, NeedsOperator, Permanent, Transient, WorkCancelled
from orchestrator.jobs import ClaimedJob, Outcome
from orchestrator.openrouter import OpenRouterClient
from orchestrator.output_image import (
    UnpackedOutput,
    check_output,
    unpack_output,
    unpacks_on_loop,
)
from orchestrator.policy import clean_title
from orchestrator.storage import output_path
from orchestrator.submit import run_to_the_end
from orchestrator.timings import StageClock

log = logging.getLogger(__name__)

TAGS = ["I2I", "Image_to_Image", "AI생성"]
FILES_NAMESPACE = uuid.UUID("6f0c7a52-64c7-4f5e-9a37-5d1b1f3f2c11")


@dataclass(frozen=True)
class Stored:
    """What finalizing needs of a stored output: no image bytes, at most its small thumbnail."""

    path: str
    url: str
    width: int
    height: int
    seed: int | None
    # Asked for while the image uploaded, from its thumbnail; None: the title model is shown
    # `url` once it is stored (TITLE_IMAGE=url).
    title: "asyncio.Task[str] | None" = None


async def unpack(output: object, deps: FlowDeps) -> UnpackedOutput:
    """RunPod's output as the PNG to store (~0.5 ms for 1 MP, on the event loop; a larger one
    in the CPU lane)."""
    with deps.metrics.stage_seconds.labels("decode").time():
        if unpacks_on_loop(output):
            return unpack_output(output)
        return await deps.cpu.run(unpack_output, output)


async def store(job: ClaimedJob, unpacked: UnpackedOutput, deps: FlowDeps) -> Stored:
    """Upload the image while the CPU lane proves it decodable: the proof (~10 ms for 1 MP)
    overlaps the upload instead of preceding it, and the title, asked for once the proof is
    done, overlaps the rest of it. An output that fails the proof is removed again before the
    job fails, so no row ever names an unproven image."""
    stage = deps.metrics.stage_seconds
    path = output_path(job.user_id or "", job.work_id)
    with stage.labels("store").time():
        upload = asyncio.create_task(deps.storage.put_png(path, unpacked.png))
        try:
            checked = await deps.cpu.run(
                check_output, unpacked.png, thumbnail=not deps.settings.titles_from_url
            )
        except Exception:  # not decodable, or the proof itself broke: the output is unproven
            upload.add_done_callback(_outcome_ignored)
            # To the end even when the job is stopped meanwhile: no unproven image is left, and
            # the upload ends inside its room (MAX_UPLOADING_MB).
            await run_to_the_end(_remove_once_ended(upload, path, deps))
            raise
        except BaseException:  # this job was stopped meanwhile
            upload.add_done_callback(_outcome_ignored)
            upload.cancel()
            raise
        title = None
        if checked.thumbnail_data_url is not None:
            title = asyncio.create_task(_title(checked.thumbnail_data_url, deps))
        try:
            url = await upload
        except BaseException:  # the job ends or retries without this image: no title for it
            if title is not None:
                title.cancel()
            raise
    deps.alerts.resolve("storage")
    return Stored(path, url, checked.width, checked.height, unpacked.seed, title)


def _outcome_ignored(task: "asyncio.Task[str]") -> None:
    """An upload whose outcome no longer matters: its failure, if any, is not logged as lost."""
    if not task.cancelled():
        task.exception()


async def _remove_once_ended(upload: "asyncio.Task[str]", path: str, deps: FlowDeps) -> None:
    """Remove an unproven output once its upload has ended (not cancelled: a cancelled upload
    may still land after the removal)."""
    await asyncio.wait({upload})
    await _remove_unproven(path, deps)


async def _remove_unproven(path: str, deps: FlowDeps) -> None:
    """Take an output that failed its proof out of storage again (best effort: no row names
    it either way, and the job's next output overwrites it)."""
    try:
        await deps.storage.remove(path)
    except Exception as exc:  # the job fails for its output, whatever this says
        log.warning("could not remove the unproven output %s: %s", path, exc)


async def title_and_finalize(
    job: ClaimedJob, stored: Stored, deps: FlowDeps, clock: StageClock | None = None
) -> Outcome:
    """Title the stored image (or await the title asked for while it uploaded), then finalize
    everything (and the job's timings) in one transaction."""
    clock = clock or StageClock()
    with clock.stage("title"):  # what the title added after the store (the job's timeline)
        title = await (stored.title or _title(stored.url, deps))
    with deps.metrics.stage_seconds.labels("finalize").time():
        await finalize(job, deps, stored=stored, title=title, clock=clock)
    log.info("job %s: completed (%dx%d, %r)", job.id, stored.width, stored.height, title)
    return Outcome.COMPLETED


async def _title(image_url: str, deps: FlowDeps) -> str:
    """make_title, its whole time in the `title` stage metric (whatever it overlapped)."""
    with deps.metrics.stage_seconds.labels("title").time():
        return await make_title(image_url, deps)


async def make_title(image_url: str, deps: FlowDeps) -> str:
    """A short Korean title from the vision model, shown `image_url` (a public URL or a data
    URL); the seed's fallback on any failure."""
    openrouter: OpenRouterClient | None = deps.openrouter
    if openrouter is None:
        return clean_title(None)
    try:
        answer = await openrouter.title(image_url)
    except NeedsOperator as exc:
        deps.alerts.report(exc.service, str(exc))
        return clean_title(None)
    except (Transient, Permanent) as exc:
        log.warning("title failed (%s); using the fallback", exc)
        return clean_title(None)
    except Exception:  # a title is never worth failing or retrying a finished image for
        log.exception("title failed unexpectedly; using the fallback")
        return clean_title(None)
    deps.alerts.resolve("openrouter")
    return clean_title(answer)


async def finalize(
    job: ClaimedJob,
    deps: FlowDeps,
    *,
    stored: Stored,
    title: str,
    clock: StageClock | None = None,
) -> None:
    """files row, completed work and completed job (and its timings), all or nothing, in one
    statement (`complete_job`)."""
    clock = clock or StageClock()
    started = clock.now()
    path, url = stored.path, stored.url
    file_id = uuid.uuid5(FILES_NAMESPACE, f"{deps.storage.bucket}/{path}")
    size = {"width": stored.width, "height": stored.height}
    output_data = {"image_url": url, "filename": path.rsplit("/", 1)[-1]} | size
    used_seed = {"seed": stored.seed} if stored.seed is not None else {}
    clock.since("finalize", started)  # what it took before its one statement
    row = await deps.held(
        "complete_job",
        job.id,
        work_id=job.work_id,
        file_id=file_id,
        user_id=job.user_id,
        bucket_id=deps.storage.bucket,
        path=path,
        file_url=url,
        title=title,
        output_data=output_data,
        tags=TAGS,
        metadata_patch=size | used_seed,
        timings=clock.take(),
        **size,
    )
    if row is None or not row["completed"]:
        raise await _not_completed(job, deps)


async def _not_completed(job: ClaimedJob, deps: FlowDeps) -> Exception:
    """Why `complete_job` wrote nothing, as finalizing reports it: the work was cancelled (the
    job is then cancelled too), or is no longer in progress, or the job is no longer ours."""
    work = await deps.db.one("work_status", work_id=job.work_id)
    status = work["status"] if work is not None else None
    if status == "cancelled":
        return WorkCancelled(job.work_id)
    if status not in ("taken", "processing"):
        return Permanent("the work was no longer in progress when its image arrived")
    return FencedOut(job.id)
