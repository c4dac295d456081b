"""Hot-reload latency: from a modelfile's write to the change being visible in ``/api/show``.

    python bench/reload.py [--edits N]

Runs a real server (in this process, on a free port) over a fresh home; each edit rewrites one
modelfile with a new temperature and polls ``/api/show`` until it reports it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=20)
    args = parser.parse_args()
    os.environ["HLLAMA_HOME"] = tempfile.mkdtemp(prefix="hllama-reload-")
    from hllama.config import load_settings
    from tests.liveserver import live_server

    folder = load_settings().modelfiles_dir
    folder.mkdir(parents=True)
    path = folder / "edited.yaml"
    path.write_text("from: org/model\nparameters:\n  temperature: 0.5\n")
    latencies = []
    with live_server(load_settings()) as url, httpx.Client() as client:
        for edit in range(args.edits):
            temperature = round(0.01 * (edit + 1), 2)
            started = time.perf_counter()
            path.write_text(f"from: org/model\nparameters:\n  temperature: {temperature}\n")
            wanted = f"temperature                    {temperature}\n"
            while wanted not in client.post(f"{url}/api/show", json={"model": "edited"}).json()["parameters"] + "\n":
                time.sleep(0.002)
            latencies.append(time.perf_counter() - started)
            time.sleep(0.1)
    median, worst = statistics.median(latencies) * 1e3, max(latencies) * 1e3
    print(f"edits: {len(latencies)}   write -> visible in /api/show: median {median:.0f} ms, max {worst:.0f} ms")


if __name__ == "__main__":
    main()
