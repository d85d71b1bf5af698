"""``cem trainer``'s health for real: its probes on the embedded broker and chDB, its watchdog."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
from conftest import run, worker_settings

from pipeline.app.health import EXIT_STALLED
from pipeline.runtime.embedded import WorkerProcess, publish_raw
from pipeline.runtime.processes import spawn
from processors.scoring import TrainingBatch
from schemas.contract import TOPIC_TRAINING

pytestmark = pytest.mark.integration

CRASH = b'"crash"'  # a training record on which the trainer's agent below raises

# `cem trainer` itself, with one fault injected below its agent: the runtime raises on CRASH, as on
# any bug it would meet. Everything above (the agent's supervision, /healthz, the watchdog) is real.
FAULTY_TRAINER = f"""
import sys
from pipeline.app.models import TrainerRuntime
from pipeline.cli import main

process = TrainerRuntime.process

async def faulty(self, events):
    if any(event.message.value == {CRASH!r} for event in events):
        raise RuntimeError("injected fault")
    await process(self, events)

TrainerRuntime.process = faulty
sys.exit(main(["trainer"]))
"""


class FaultyTrainer(WorkerProcess):
    def launch(self) -> None:
        import os

        self.process = spawn([sys.executable, "-c", FAULTY_TRAINER], self.log_path, dict(os.environ, **self.settings.to_env()))


def probe(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as refused:
        return refused.code, json.load(refused)


def training_record(offset: int) -> tuple[bytes | None, bytes]:
    batch = TrainingBatch(texts=[(f"Great help, thank you ({offset})", True, offset)], watermark_ms=offset + 1)
    return None, orjson.dumps(batch.to_record())


def test_a_trainer_is_live_and_ready_while_it_trains_and_a_crash_of_its_agent_ends_it(broker, tmp_path: Path):
    """Property: a real ``cem trainer`` answers ``/healthz`` and ``/readyz`` with 200 once it holds
    ``cem.model.training`` and while it learns and acks training records; when its agent crashes,
    ``/healthz`` answers 503 with the agent's error, and the watchdog ends the process with status 3
    so that a supervisor restarts it."""
    settings = worker_settings(broker, tmp_path, trainer="process", model_publish_interval_s=0.2,
                               trainer_checkpoint_interval_s=0.5, stall_timeout_s=20.0)  # exits 5 s after the crash
    trainer = FaultyTrainer(settings, tmp_path / "trainer.log", "trainer")
    try:
        trainer.start(timeout_s=90)
        trainer.wait_until(lambda st: st["assigned"], 60, "the trainer did not get cem.model.training")
        assert probe(f"{trainer.url}/healthz") == (200, {"status": "live"})
        assert probe(f"{trainer.url}/readyz") == (200, {"status": "ready"})

        run(publish_raw(broker.bootstrap, [training_record(i) for i in range(20)], topic=TOPIC_TRAINING))
        trainer.wait_until(lambda st: st["acked_records"] >= 20, 60, "the trainer did not checkpoint its input")
        assert probe(f"{trainer.url}/healthz") == (200, {"status": "live"}), "training and acking: live"
        assert probe(f"{trainer.url}/readyz") == (200, {"status": "ready"})

        run(publish_raw(broker.bootstrap, [(None, CRASH)], topic=TOPIC_TRAINING))
        trainer.wait_until(lambda st: st["live"]["status"] == "crashed", 60, "the crash did not show")
        status, body = probe(f"{trainer.url}/healthz")
        assert status == 503 and "agent training: RuntimeError: injected fault" in body["why"], body
        assert probe(f"{trainer.url}/readyz")[0] == 503
        assert trainer.process is not None
        assert trainer.process.wait(timeout=60) == EXIT_STALLED, "the watchdog ends a trainer whose agent crashed"
    finally:
        trainer.kill()
