"""Running many calls at once: bounded concurrency, input order, per-item errors, progress bar."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from mlflow_lite_plugin.core.errors import ArgumentError, MlflowLiteError

T = TypeVar("T")

BatchItem = str | Mapping[str, Any]


def item_kwargs(item: BatchItem, common: Mapping[str, Any]) -> dict[str, Any]:
    """A batch item as query keywords: a string is a prompt, a dict overrides ``common``."""
    if isinstance(item, str):
        return {**common, "prompt": item}
    if isinstance(item, Mapping):
        return {**common, **item}
    raise ArgumentError("items", f"each item must be a prompt string or a dict of query arguments, got {item!r}")


def check_concurrency(max_concurrency: Any) -> int:
    if not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool) or max_concurrency < 1:
        raise ArgumentError("max_concurrency", f"must be an int >= 1, got {max_concurrency!r}")
    return max_concurrency


async def gather_bounded(
    items: Sequence[BatchItem],
    run: Callable[[BatchItem], Awaitable[T]],
    max_concurrency: int,
    progress: bool,
) -> list[T | MlflowLiteError]:
    """Run ``run`` on every item, at most ``max_concurrency`` at a time, results in input order.
    Our errors come back in the item's place; anything else (a bug, cancellation) propagates."""
    semaphore = asyncio.Semaphore(check_concurrency(max_concurrency))
    bar = _progress_bar(len(items)) if progress else None

    async def one(item: BatchItem) -> T | MlflowLiteError:
        async with semaphore:
            try:
                return await run(item)
            except MlflowLiteError as error:
                return error
            finally:
                if bar is not None:
                    bar.update(1)

    try:
        return list(await asyncio.gather(*(one(item) for item in items)))
    finally:
        if bar is not None:
            bar.close()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, also inside a running loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # A loop already runs in this thread (a notebook cell): use a private loop in a worker thread,
    # in a copy of this context (MLflow's prediction context, which links traces to the model).
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-lite-batch") as pool:
        return pool.submit(contextvars.copy_context().run, asyncio.run, coro).result()


def _progress_bar(total: int) -> Any:
    from tqdm.auto import tqdm  # auto: a widget in notebooks, text in terminals

    return tqdm(total=total, desc="mlflow-lite batch", unit="call")
