"""`submit.run_to_the_end`: a step that must not be torn apart finishes before its caller's
cancellation goes on, and a failure of that step is retrieved, not left for the garbage collector
to report as "Task exception was never retrieved"."""

import asyncio
import gc

import pytest

from orchestrator.submit import run_to_the_end


def test_a_step_that_fails_after_its_caller_was_cancelled_is_finished_and_retrieved():
    reported: list[dict] = []
    finished: list[bool] = []

    async def step() -> str:
        await asyncio.sleep(0.1)
        finished.append(True)
        raise RuntimeError("the record failed")

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        caller = asyncio.create_task(run_to_the_end(step()))
        await asyncio.sleep(0.02)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        gc.collect()  # an unretrieved exception is reported when its task is collected

    asyncio.run(scenario())
    assert finished == [True]
    assert reported == []
