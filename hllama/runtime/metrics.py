"""Prometheus metrics of one server: what its requests, models and modelfiles do (``GET /metrics``).

Each server has a registry of its own (several in one process stay apart, as in tests). Counters and histograms
move as things happen: requests (by route, model and status, counted as their responses end), answers (tokens,
time to first token, time per output token), model loads and unloads, prefix-cache reuse, modelfile reloads.
What is true at a moment (requests running and waiting, batch width, loaded models and their memory) is read
from the scheduler when scraped. The model label is only ever a model that resolved: a request that failed
before it did is counted under ``model=""``, so a client cannot grow the label set.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Seconds, for request durations and times to the first token.
_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: Seconds per generated token.
_PER_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter("hllama_requests", "HTTP requests by route, model and status",
                                ["route", "model", "status"], registry=registry)
        self.request_seconds = Histogram("hllama_request_duration_seconds", "Time from request to the end of its "
                                         "response, by model", ["model"], buckets=_SECONDS, registry=registry)
        self.first_token_seconds = Histogram("hllama_time_to_first_token_seconds", "Time from request to the "
                                             "first generated token, by model", ["model"], buckets=_SECONDS,
                                             registry=registry)
        self.token_seconds = Histogram("hllama_time_per_output_token_seconds", "Decoding time per generated "
                                       "token after the first, by model", ["model"], buckets=_PER_TOKEN,
                                       registry=registry)
        self.prompt_tokens = Counter("hllama_prompt_tokens", "Prompt tokens of answers, by model", ["model"],
                                     registry=registry)
        self.generated_tokens = Counter("hllama_generation_tokens", "Generated tokens, by model", ["model"],
                                        registry=registry)
        self.prefix_hits = Counter("hllama_prefix_cache_hits", "Answers that reused an earlier turn's KV cache",
                                   ["model"], registry=registry)
        self.prefix_tokens = Counter("hllama_prefix_cache_tokens_reused", "Prompt tokens taken from an earlier "
                                     "turn's KV cache", ["model"], registry=registry)
        self.turns_dropped = Counter("hllama_prompt_turns_dropped", "Oldest turns left out of prompts to fit the "
                                     "context, by model", ["model"], registry=registry)
        self.loads = Counter("hllama_model_loads", "Models loaded", ["model"], registry=registry)
        self.unloads = Counter("hllama_model_unloads", "Models unloaded", ["model"], registry=registry)
        self.load_seconds = Histogram("hllama_model_load_duration_seconds", "Time to load a model", ["model"],
                                      buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900), registry=registry)
        self.reloads = Counter("hllama_modelfile_reloads", "Times the modelfiles were compiled again after a "
                               "change", registry=registry)
        self.reload_errors = Counter("hllama_modelfile_reload_errors", "Modelfiles that broke, or reloads that "
                                     "failed", registry=registry)
        self.log_dropped = Counter("hllama_request_log_dropped", "Request log entries lost (a locked or full "
                                   "database, or a full queue)", registry=registry)

    def watch(self, scheduler: Any) -> None:
        """Read what is true now (running, waiting, batch width, loaded models) from ``scheduler`` when scraped."""
        self.registry.register(_SchedulerCollector(scheduler))

    def answered(self, model: str, stats: Any) -> None:
        """One answer's numbers (an engine's :class:`~hllama.engine.generate.Stats`)."""
        self.prompt_tokens.labels(model).inc(stats.prompt_tokens)
        self.generated_tokens.labels(model).inc(stats.generated_tokens)
        if stats.generated_tokens:
            self.first_token_seconds.labels(model).observe(stats.prompt_eval_ns / 1e9)
        if stats.generated_tokens > 1:
            self.token_seconds.labels(model).observe(stats.eval_ns / 1e9 / (stats.generated_tokens - 1))
        if stats.cached_tokens:
            self.prefix_hits.labels(model).inc()
            self.prefix_tokens.labels(model).inc(stats.cached_tokens)

    def loaded(self, model: str, seconds: float) -> None:
        self.loads.labels(model).inc()
        self.load_seconds.labels(model).observe(seconds)

    def unloaded(self, model: str) -> None:
        self.unloads.labels(model).inc()


class _SchedulerCollector:
    """Gauges read from the scheduler at each scrape."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def describe(self) -> list[Metric]:
        return []  # read at collect time; nothing to check when registered

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily("hllama_requests_running", "Requests a model is answering", labels=["model"])
        waiting = GaugeMetricFamily("hllama_requests_waiting", "Requests queued for a model", labels=["model"])
        width = GaugeMetricFamily("hllama_batch_width", "Rows a model decodes together now", labels=["model"])
        memory = GaugeMetricFamily("hllama_model_memory_bytes", "Memory a loaded model is counted at",
                                   labels=["model"])
        loaded = GaugeMetricFamily("hllama_models_loaded", "Models loaded now")
        runners = list(self.scheduler.runners)
        for runner in runners:
            running.add_metric([runner.name], runner.active)
            waiting.add_metric([runner.name], runner.waiting)
            batched = runner.backend.describe().batch_width
            width.add_metric([runner.name], batched if batched is not None else min(runner.active, 1))
            memory.add_metric([runner.name], runner.size)
        loaded.add_metric([], len(runners))
        yield from (running, waiting, width, memory, loaded)


class RequestMetrics:
    """ASGI middleware: count each request by route, model and status, and time it, when its response ends
    (a streamed one included). The route is the matched path template (``unmatched`` otherwise); the model is
    what the route resolved (``request.state.model``), and only on a success."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            model = (scope.get("state") or {}).get("model") or "" if status < 400 else ""
            self.metrics.requests.labels(route, model, str(status)).inc()
            if model:
                self.metrics.request_seconds.labels(model).observe(time.perf_counter() - started)
