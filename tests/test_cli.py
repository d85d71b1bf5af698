"""The CLI as channel systems and operators use it: clear errors, line-numbered rejections."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from conftest import descendants, kill_all

from pipeline.cli import main
from pipeline.runtime.broker import free_port


def test_generate_writes_jsonl_and_its_ground_truth(tmp_path, capsys):
    out = tmp_path / "journeys.jsonl"
    assert main(["generate", "--events", "300", "--customers", "20", "--seed", "4", "--output", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 300 and json.loads(lines[0])["event_id"]
    truth = json.loads((tmp_path / "journeys.truth.json").read_text())
    assert sum(channel["events"] for channel in truth["kpi"].values()) == 300
    assert json.loads(capsys.readouterr().out.strip())["events"] == 300


def test_publish_reports_bad_lines_by_number_and_sends_nothing(tmp_path, capsys):
    good = {"event_id": "e1", "customer_id": "c1", "occurred_at": "2026-01-01T00:00:00Z", "channel": "web", "type": "login"}
    bad_score = {**good, "event_id": "e2", "nps": 12}
    lines = [json.dumps(good), "{not json", json.dumps(bad_score), json.dumps({**good, "channel": "fax"})]
    path = tmp_path / "touchpoints.jsonl"
    path.write_text("\n".join(lines) + "\n")
    # no broker on this port: proves nothing is sent when lines are bad
    assert main(["publish", str(path), "--bootstrap", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert f"{path}:2: undecodable" in err
    assert f"{path}:3: out_of_range: nps=12 is outside 0..10" in err
    assert f"{path}:4: unknown_enum" in err
    assert "nothing published" in err


def test_clear_errors_instead_of_tracebacks(tmp_path, capsys):
    assert main(["publish", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["query", "SELECT 1", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "cem: error:" in capsys.readouterr().err
    assert main(["generate"]) == 2
    assert "--output" in capsys.readouterr().err


def test_cem_run_drains_and_stops_its_children_on_sigterm(tmp_path):
    """A supervisor's SIGTERM (docker stop, systemd, timeout) is Ctrl-C: drain, stop every child (the
    workers, the trainer, the engine, the broker), print the summary. By default Python would die at
    once and orphan them. Started with SIGINT ignored (a background job of a script, as CI starts
    it), it must still stop."""
    broker_port = free_port()
    env = {**os.environ, "CEM_METRICS_PORT": str(free_port()), "CEM_WEB_PORT": str(free_port())}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "run", "--rate", "50", "--data-dir", str(tmp_path), "--broker-port", str(broker_port)],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as a script's background job inherits it
    )
    try:
        for line in process.stderr:  # progress goes to stderr; wait for traffic to flow
            if line.startswith("[") and " processed " in line and int(line.split(" processed ")[1].split()[0]) > 0:
                break
        children = descendants(process.pid)  # the broker, the engine, the workers, the trainer
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            kill_all(process.pid)
    assert process.returncode == 0
    summary = json.loads(out.strip().splitlines()[-1])
    # Every touchpoint processed once, but those with junk identifiers only (the generator's stitching traffic)
    assert summary["published"] == summary["processed"] + sum(summary["dead_lettered"].values())
    assert summary["processed"] > 0 and set(summary["dead_lettered"]) <= {"missing_field"}
    assert len(children) >= 4 and not [pid for pid in children if alive(pid)], "every child is stopped"
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", broker_port)) != 0  # the broker is gone too


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not reaped by its killed parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
