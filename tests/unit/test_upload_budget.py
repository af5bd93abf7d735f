"""UploadBudget (MAX_UPLOADING_MB): room for images uploading at once, by bytes, in arrival
order; whatever happens to a waiter, every byte granted comes back."""

import asyncio

from orchestrator.uploads import UploadBudget


async def settle() -> None:
    """Let every ready task run."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_room_is_granted_in_arrival_order_and_comes_back():
    async def run():
        budget, granted = UploadBudget(10), []

        async def upload(name, size, hold):
            with await budget.reserve(size):
                granted.append(name)
                await hold.wait()

        holds = {name: asyncio.Event() for name in "abc"}
        tasks = [
            asyncio.create_task(upload("a", 6, holds["a"])),
            asyncio.create_task(upload("b", 8, holds["b"])),  # does not fit beside a
            asyncio.create_task(upload("c", 2, holds["c"])),  # would fit, but b came first
        ]
        await settle()
        assert (granted, budget.free) == (["a"], 4)
        holds["a"].set()
        await settle()
        assert (granted, budget.free) == (["a", "b", "c"], 0)
        holds["b"].set()
        holds["c"].set()
        await asyncio.gather(*tasks)
        return budget.free

    assert asyncio.run(run()) == 10


def test_an_image_larger_than_the_budget_takes_all_of_it():
    async def run():
        budget = UploadBudget(10)
        small = await budget.reserve(3)
        large = asyncio.create_task(budget.reserve(50))
        await settle()
        assert not large.done()  # waits for the whole budget
        small.release()
        with await large as room:
            assert (room.size, budget.free) == (10, 0)
        return budget.free

    assert asyncio.run(run()) == 10


def test_a_cancelled_waiter_takes_nothing_and_lets_those_behind_it_go():
    async def run():
        budget = UploadBudget(10)
        first = await budget.reserve(6)
        blocked = asyncio.create_task(budget.reserve(8))
        behind = asyncio.create_task(budget.reserve(4))
        await settle()
        assert not behind.done()  # behind the waiter that does not fit
        blocked.cancel()
        await settle()
        assert blocked.cancelled()
        assert behind.done()
        behind.result().release()
        first.release()
        first.release()  # a second release gives nothing back twice
        return budget.free

    assert asyncio.run(run()) == 10


def test_room_granted_as_its_waiter_is_cancelled_is_passed_on():
    async def run():
        budget = UploadBudget(10)
        first = await budget.reserve(10)
        waiter = asyncio.create_task(budget.reserve(10))
        await settle()
        first.release()  # grants the waiter's room...
        waiter.cancel()  # ...which is cancelled before it runs
        await settle()
        assert waiter.cancelled()
        return budget.free

    assert asyncio.run(run()) == 10
