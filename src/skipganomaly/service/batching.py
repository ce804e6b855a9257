"""The batcher: images of all requests in flight gathered into batches of up to ``max_batch`` for
one ONNX Runtime call at a time; past ``max_queue`` waiting images a request is refused (503)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..deploy.detector import Detector
from ..deploy.prediction import Prediction
from .uploads import ServiceError, ServiceLimits

logger = logging.getLogger("skipganomaly.service")


class Batcher:
    """Gathers prepared images from concurrent requests into batches for the model; one model
    call at a time, on its own thread, so the event loop keeps accepting and decoding."""

    def __init__(self, detector: Detector, limits: ServiceLimits):
        self.detector = detector
        self.limits = limits
        self.queue: asyncio.Queue | None = None
        self.waiting = 0
        self.task: asyncio.Task | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skipganomaly-model")
        self.batches = 0
        self.images = 0

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=True)

    async def score(self, images: list[np.ndarray]) -> list[Prediction]:
        if self.waiting + len(images) > self.limits.max_queue:
            raise ServiceError(
                503,
                f"busy: {self.waiting} images are waiting for the model; retry shortly",
                {"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        futures = []
        self.waiting += len(images)
        for image in images:
            future = loop.create_future()
            futures.append(future)
            self.queue.put_nowait((image, future))
        try:
            return list(await asyncio.gather(*futures))
        finally:
            self.waiting -= len(images)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            items = [first]
            deadline = loop.time() + self.limits.batch_wait_ms / 1000.0
            while len(items) < self.limits.max_batch:
                try:
                    items.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            live = [(image, future) for image, future in items if not future.done()]
            if not live:
                continue
            batch = np.stack([image for image, _ in live])
            try:
                results = await loop.run_in_executor(self.executor, self.detector.score_prepared, batch, True)
            except Exception as exc:  # noqa: BLE001  (a model failure fails these requests, not the service)
                logger.exception("scoring a batch failed")
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(live)
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)
