"""GET /metrics: every family, parsed with prometheus_client's own parser, moving as requests are made."""

import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hllama.config import load_settings

from .liveserver import live_server
from .tinymodel import CHATS, REPO_ID

ASK = [{"role": "user", "content": CHATS[0][0]}]


def _scrape(url: str, **headers: str) -> dict[str, dict[tuple, float]]:
    """family name -> {(sample name, sorted labels): value}."""
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {family.name: {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                          for sample in family.samples}
            for family in text_string_to_metric_families(response.text)}


def _value(families: dict, family: str, sample: str | None = None, **labels: str) -> float:
    key = (sample or family, tuple(sorted(labels.items())))
    return families.get(family, {}).get(key, 0.0)


@pytest.fixture
def url(tiny_cache: Path, modelfiles: Path):
    with live_server(load_settings()) as base:
        yield base


def test_every_family_moves_as_requests_are_made(url: str, modelfiles: Path):
    before = _scrape(url)
    assert _value(before, "hllama_models_loaded") == 0
    chat = {"model": REPO_ID, "messages": ASK, "stream": False, "options": {"temperature": 0}}
    first = httpx.post(f"{url}/api/chat", json=chat, timeout=120).json()
    second = httpx.post(f"{url}/api/chat", json=chat, timeout=120).json()  # the same prompt: its cache is reused
    assert httpx.post(f"{url}/api/chat", json={**chat, "model": "nobody/nothing"}, timeout=60).status_code == 404
    assert httpx.post(f"{url}/api/chat", json={**chat, "options": {"temperature": -1}}, timeout=60).status_code == 400

    # while an answer streams, it is running; a client that leaves is counted when its response ends
    seen_running = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not seen_running.is_set():
            if _value(_scrape(url), "hllama_requests_running", model=REPO_ID) >= 1:
                seen_running.set()
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    story = {"model": REPO_ID, "messages": [{"role": "user", "content": CHATS[4][0]}],
             "options": {"temperature": 0.9, "num_predict": 200}}
    with httpx.stream("POST", f"{url}/api/chat", json=story, timeout=60) as response:
        for _ in zip(range(3), response.iter_lines(), strict=False):
            time.sleep(0.3)
    watcher.join()
    assert seen_running.is_set()

    (modelfiles / "tiny.yaml").write_text(f"from: {REPO_ID}\nparameters: {{temperature: 0}}\n")
    (modelfiles / "broken.yaml").write_text("from: [oops\n")
    deadline = time.monotonic() + 10
    while _value(_scrape(url), "hllama_modelfile_reload_errors", "hllama_modelfile_reload_errors_total") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    httpx.post(f"{url}/api/generate", json={"model": REPO_ID, "keep_alive": 0}, timeout=60)  # unload

    after = _scrape(url)
    ok = dict(route="/api/chat", model=REPO_ID, status="200")
    assert _value(after, "hllama_requests", "hllama_requests_total", **ok) == 3
    assert _value(after, "hllama_requests", "hllama_requests_total", route="/api/chat", model="", status="404") == 1
    assert _value(after, "hllama_requests", "hllama_requests_total", route="/api/chat", model="", status="400") == 1
    assert _value(after, "hllama_request_duration_seconds", "hllama_request_duration_seconds_count",
                  model=REPO_ID) >= 3
    for family in ("hllama_time_to_first_token_seconds", "hllama_time_per_output_token_seconds"):
        assert _value(after, family, f"{family}_count", model=REPO_ID) == 3
    generated = first["eval_count"] + second["eval_count"]
    assert _value(after, "hllama_generation_tokens", "hllama_generation_tokens_total", model=REPO_ID) > generated
    assert _value(after, "hllama_prompt_tokens", "hllama_prompt_tokens_total", model=REPO_ID) >= \
        first["prompt_eval_count"] * 2
    assert _value(after, "hllama_prefix_cache_hits", "hllama_prefix_cache_hits_total", model=REPO_ID) >= 1
    assert _value(after, "hllama_prefix_cache_tokens_reused", "hllama_prefix_cache_tokens_reused_total",
                  model=REPO_ID) >= second["prompt_eval_cached_count"] > 0
    assert _value(after, "hllama_model_loads", "hllama_model_loads_total", model=REPO_ID) == 1
    assert _value(after, "hllama_model_unloads", "hllama_model_unloads_total", model=REPO_ID) == 1
    assert _value(after, "hllama_model_load_duration_seconds", "hllama_model_load_duration_seconds_count",
                  model=REPO_ID) == 1
    assert _value(after, "hllama_modelfile_reloads", "hllama_modelfile_reloads_total") >= 1
    assert _value(after, "hllama_models_loaded") == 0
    assert {"hllama_requests_waiting", "hllama_batch_width", "hllama_model_memory_bytes"} <= set(after)  # even
    # while no model is loaded


def test_a_loaded_model_shows_its_memory_and_batch_width(url: str):
    httpx.post(f"{url}/api/generate", json={"model": REPO_ID, "prompt": ""}, timeout=120)
    families = _scrape(url)
    assert _value(families, "hllama_models_loaded") == 1
    assert _value(families, "hllama_model_memory_bytes", model=REPO_ID) > 0
    assert _value(families, "hllama_batch_width", model=REPO_ID) == 0
    assert _value(families, "hllama_requests_waiting", model=REPO_ID) == 0


def test_busy_answers_are_counted(tiny_cache: Path, monkeypatch):
    monkeypatch.setenv("HLLAMA_MAX_QUEUE", "1")
    monkeypatch.setenv("HLLAMA_NUM_PARALLEL", "1")
    with live_server(load_settings(), watch=False) as base:
        story = {"model": REPO_ID, "messages": ASK, "stream": False,
                 "options": {"temperature": 0.9, "num_predict": 150}}
        with httpx.Client(timeout=120) as client:
            threads = [threading.Thread(target=client.post, args=(f"{base}/api/chat",), kwargs={"json": story})
                       for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        families = _scrape(base)
    busy = _value(families, "hllama_requests", "hllama_requests_total", route="/api/chat", model="", status="503")
    done = _value(families, "hllama_requests", "hllama_requests_total", route="/api/chat", model=REPO_ID,
                  status="200")
    assert busy >= 1 and busy + done == 4


def test_metrics_need_the_key_unless_opened_for_loopback(tiny_cache: Path, monkeypatch):
    monkeypatch.setenv("HLLAMA_API_KEY", "sesame")
    with live_server(load_settings(), watch=False) as base:
        assert httpx.get(f"{base}/metrics").status_code == 401
        assert _scrape(base, authorization="Bearer sesame")
    monkeypatch.setenv("HLLAMA_METRICS_WITHOUT_KEY", "true")
    with live_server(load_settings(), watch=False) as base:
        assert _scrape(base)  # this test's client is on loopback
        assert httpx.post(f"{base}/api/chat", json={"model": REPO_ID, "messages": ASK}).status_code == 401


def test_metrics_can_be_turned_off(tiny_cache: Path, monkeypatch):
    monkeypatch.setenv("HLLAMA_METRICS", "false")
    with live_server(load_settings(), watch=False) as base:
        assert httpx.get(f"{base}/metrics").status_code == 404
